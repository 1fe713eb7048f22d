"""kNN query latency of the gallery index: exact inner product vs IVF (what the gallery
uses above 200k items) and HNSW, with recall@10 against exact.

    python bench/bench_knn.py [--sizes 10000 100000 1000000] [--dim 256] [--queries 500]
    python bench/bench_knn.py --workers-memory 60000 --dim 512

The second: a deployment's reference set of that many items in 2 worker processes, loaded
as serving does (ReferenceSet.load: the file's pages, shared) against a copy each (the
file read into memory), alternating 3 times: the workers' memory (proportional set size,
summed: a shared page counts half in each) and their batch-1 search latency.

Synthetic unit vectors drawn around 1,000 cluster centres (like embeddings of a labelled
gallery); queries are perturbed gallery items. Latency is per query, batch of 1, one
thread each (as TorchServe workers call it), median over the queries. Indexes are built
with every core. IVF: 4 sqrt(N) lists, trained on up to 100k items, nprobe 16; HNSW: M = 32,
efSearch 128 (serving/reference_set.py).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from serving.reference_set import INDEX_FILE, ReferenceSet


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


def worker(directory: Path, shared: bool, queries: np.ndarray, conn) -> None:
    index = (ReferenceSet.load(directory).index if shared
             else faiss.read_index(str(directory / INDEX_FILE)))
    faiss.omp_set_num_threads(1)
    conn.send(latency_ms(index, queries))
    conn.recv()  # alive, and holding the index, until its memory is read


def memory_kb(pid: int) -> dict[str, int]:
    fields = (line.split() for line in Path(f"/proc/{pid}/smaps_rollup").read_text()
              .splitlines()[1:])
    return {f[0].rstrip(":"): int(f[1]) for f in fields}


def workers_memory(n: int, dim: int, queries: int) -> None:
    x, q = data(n, dim, queries)
    directory = Path(tempfile.mkdtemp(prefix="mec-bench-knn-"))
    ReferenceSet.build(x, [str(i) for i in range(n)], [""] * n, "exact").save(directory)
    size_mb = (directory / INDEX_FILE).stat().st_size / 2**20
    print(f"{n} items of {dim} (index file {size_mb:.0f} MB) in 2 workers; {queries} "
          "queries, batch 1, one thread each")
    print("| loading | search ms, each worker | PSS MB, summed | anonymous MB, summed |")
    print("|---|---|---|---|")
    spawn = mp.get_context("spawn")  # fresh processes, as TorchServe starts its workers
    for shared in (True, False) * 3:
        pipes = [spawn.Pipe() for _ in range(2)]
        procs = [spawn.Process(target=worker, args=(directory, shared, q, theirs), daemon=True)
                 for _, theirs in pipes]
        for p in procs:
            p.start()
        for _, theirs in pipes:
            theirs.close()  # a worker that dies ends our recv with EOFError, not a hang
        ms = [ours.recv() for ours, _ in pipes]
        kb = [memory_kb(p.pid) for p in procs]
        for ours, _ in pipes:
            ours.send(None)
        for p in procs:
            p.join()
        print(f"| {'shared (serving)' if shared else 'a copy each'} | "
              f"{' / '.join(f'{v:.3f}' for v in ms)} | "
              f"{sum(k['Pss'] for k in kb) / 1024:.1f} | "
              f"{sum(k['Anonymous'] for k in kb) / 1024:.1f} |", flush=True)
    shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--workers-memory", type=int, metavar="ITEMS",
                        help="instead: a reference set of ITEMS in 2 workers, shared or "
                        "copied")
    args = parser.parse_args()
    if args.workers_memory:
        workers_memory(args.workers_memory, args.dim, args.queries)
        return
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
