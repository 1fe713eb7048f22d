"""kNN query latency of the gallery index: exact inner product vs IVF (what the gallery
uses above 200k items) and HNSW, with recall@10 against exact.

    python bench/bench_knn.py [--sizes 10000 100000 1000000] [--dim 256] [--queries 500]

Synthetic unit vectors drawn around 1,000 cluster centres (like embeddings of a labelled
gallery); queries are perturbed gallery items. Latency is per query, batch of 1, one
thread each (as TorchServe workers call it), median over the queries. Indexes are built
with every core. IVF: 4 sqrt(N) lists, trained on up to 100k items, nprobe 16; HNSW: M = 32,
efSearch 128 (serving/reference_set.py).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from serving.reference_set import ReferenceSet


def data(n: int, dim: int, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal((queries, dim)).astype(np.float32)
    q = x[rng.integers(0, n, queries)] + 0.05 * noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def latency_ms(index, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], 10)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    cores = faiss.omp_get_max_threads()
    print(f"dim {args.dim}, {args.queries} queries, k = 10, 1 thread per query; "
          f"built with {cores} threads")
    print(f"{'items':>9} | {'exact ms':>8} | {'hnsw ms':>8} {'recall':>6} {'build s':>7} | "
          f"{'ivf ms':>7} {'recall':>6} {'build s':>7}")
    for n in args.sizes:
        x, q = data(n, args.dim, args.queries)
        ids, labels = [str(i) for i in range(n)], [""] * n
        faiss.omp_set_num_threads(cores)
        exact = ReferenceSet.build(x, ids, labels, "exact")
        start = time.perf_counter()
        hnsw = ReferenceSet.build(x, ids, labels, "hnsw")
        hnsw_build = time.perf_counter() - start
        start = time.perf_counter()
        inverted = ReferenceSet.build(x, ids, labels, "ivf").index
        ivf_build = time.perf_counter() - start
        _, truth = exact.index.search(q, 10)
        r_hnsw, r_ivf = (recall(truth, i.search(q, 10)[1]) for i in (hnsw.index, inverted))
        faiss.omp_set_num_threads(1)
        print(f"{n:>9} | {latency_ms(exact.index, q):>8.3f} | {latency_ms(hnsw.index, q):>8.3f} "
              f"{r_hnsw:>6.3f} {hnsw_build:>7.1f} | {latency_ms(inverted, q):>7.3f} {r_ivf:>6.3f} "
              f"{ivf_build:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
