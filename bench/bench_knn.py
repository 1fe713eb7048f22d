"""kNN query latency of the gallery index: exact inner product vs HNSW, with recall@10.

    python bench/bench_knn.py [--sizes 10000 100000 1000000] [--dim 256] [--queries 1000]

Synthetic unit vectors drawn around 1,000 cluster centres (like embeddings of a labelled
gallery); queries are perturbed gallery items. Latency is per query, batch of 1, one
thread each (as TorchServe workers call it), median over the queries.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from serving.gallery import Gallery


def data(n: int, dim: int, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal((queries, dim)).astype(np.float32)
    q = x[rng.integers(0, n, queries)] + 0.05 * noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def latency_ms(gallery: Gallery, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        start = time.perf_counter()
        gallery.index.search(q[None], 10)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    print(f"dim {args.dim}, {args.queries} queries, k = 10, 1 thread")
    print(f"{'items':>9} | {'exact ms':>8} | {'hnsw ms':>8} {'recall@10':>9} {'build s':>8}")
    for n in args.sizes:
        x, q = data(n, args.dim, args.queries)
        ids, labels = [str(i) for i in range(n)], [""] * n
        exact = Gallery.build(x, ids, labels, "exact")
        start = time.perf_counter()
        hnsw = Gallery.build(x, ids, labels, "hnsw")
        build = time.perf_counter() - start
        _, truth = exact.index.search(q, 10)
        _, found = hnsw.index.search(q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
        print(f"{n:>9} | {latency_ms(exact, q):>8.3f} | {latency_ms(hnsw, q):>8.3f} "
              f"{recall:>9.3f} {build:>8.1f}")


if __name__ == "__main__":
    main()
