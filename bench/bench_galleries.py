"""Galleries: how fast items go in, how fast searches answer at 10k / 100k / 1M items with
and without a filter that keeps 10 % of them, and the approximate index's recall@10.

    python bench/bench_galleries.py [--sizes 10000 100000 1000000] [--json]
    python bench/bench_galleries.py --report docs/performance/galleries/2026-12-01.json

Index: the API's in-memory index (serving.vector_index) on synthetic clustered unit
vectors (d = 256 as bench_knn.py; metadata {"shard": i % 10}); items added in batches of
10,000; 300 queries one at a time; recall@10 against brute force over the same items and
filter. Platform: a whole stack (API, worker, TorchServe, SQLite) with a 32-px resnet18
deployed as bench_embed_route.py does; items added through POST /v1/galleries/{name}/items
(vectors in batches of 1,000; images 64 per request, answered at once; images as one
NDJSON import job) and searched through /search, one client at a time.
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

import numpy as np
import records
from bench_embed_route import CONFIG
from bench_knn import data
from bench_serving import pngs

from mec_client import Client
from mec_platform.stack import Ports, Stack
from serving.vector_index import VectorIndex, parse_filter

TENTH = {"shard": 3}
QUERIES = 300


def percentiles_ms(times: list[float]) -> dict:
    return {"p50_ms": round(1e3 * float(np.percentile(times, 50)), 3),
            "p99_ms": round(1e3 * float(np.percentile(times, 99)), 3)}


def timed_searches(search, queries: np.ndarray) -> tuple[dict, list]:
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q))
        times.append(time.perf_counter() - start)
    return percentiles_ms(times), found


def brute_top10(x: np.ndarray, queries: np.ndarray, keep: np.ndarray) -> list[set]:
    slots = np.flatnonzero(keep)
    out = []
    for start in range(0, len(queries), 50):
        scores = queries[start:start + 50] @ x[slots].T
        top = np.argpartition(-scores, 9, axis=1)[:, :10]
        out += [{str(i) for i in slots[row]} for row in top]
    return out


def index_run(n: int, dim: int) -> dict:
    x, queries = data(n, dim, QUERIES)
    ids = [str(i) for i in range(n)]
    metas = [{"shard": i % 10} for i in range(n)]
    index = VectorIndex(dim)
    start = time.perf_counter()
    for s in range(0, n, 10_000):
        index.upsert(ids[s:s + 10_000], x[s:s + 10_000], metas[s:s + 10_000])
    added = n / (time.perf_counter() - start)
    record = {"items": n, "index": "ivf" if index.ivf is not None else "exact",
              "add_items_per_s": round(added)}
    shards = np.arange(n) % 10
    for name, spec, keep in (("all", None, np.ones(n, bool)),
                             ("filter 10 %", TENTH, shards == TENTH["shard"])):
        allowed = parse_filter(spec)
        latency, found = timed_searches(
            lambda q, allowed=allowed: index.search(q, 10, allowed)[0], queries)
        truth = brute_top10(x, queries, keep)
        recall = np.mean([len({h["id"] for h in f} & t) / 10 for f, t in zip(found, truth)])
        record[name] = latency | {"recall_at_10": round(float(recall), 4)}
    return record


def platform_run(vectors: int, images: int, dim_queries: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mec-bench-galleries-"))
    stack = Stack(root, Ports.any_free())
    try:
        stack.up()
        client = Client(stack.api_url, stack.create_key("bench"), timeout=600)
        job = client.wait(client.submit({"kind": "pretrain", "config": CONFIG}).id, poll=0.5)
        model = next(m for m in client.models().data if m.job_id == job.id)
        deployed = client.wait(client.deploy(model.id).id, poll=0.5)
        if deployed.status != "succeeded":
            raise SystemExit(f"deploy failed: {deployed.error}")
        galleries = client.galleries
        dim = galleries.create("vectors", model.id).dim
        x, queries = data(vectors, dim, dim_queries)
        start = time.perf_counter()
        for s in range(0, vectors, 1000):
            galleries.add("vectors", [{"id": str(i), "vector": x[i], "metadata": {
                "shard": i % 10}} for i in range(s, min(s + 1000, vectors))])
        record = {"dim": dim, "vectors": vectors,
                  "add_vectors_per_s": round(vectors / (time.perf_counter() - start))}
        galleries.search("vectors", vector=queries[0].tolist())  # the index is built here
        for name, spec in (("search", None), ("search filter 10 %", TENTH)):
            record[name] = timed_searches(lambda q, spec=spec: galleries.search(
                "vectors", vector=q.tolist(), k=10, filter=spec), queries)[0]
        pictures = pngs(images)
        galleries.create("images", model.id)
        start = time.perf_counter()
        for s in range(0, images, 64):
            galleries.add("images", [{"id": str(i), "image": pictures[i]}
                                     for i in range(s, min(s + 64, images))])
        record |= {"images": images,
                   "add_images_per_s": round(images / (time.perf_counter() - start))}
        galleries.create("imported", model.id)
        start = time.perf_counter()
        imported = galleries.add("imported", [{"id": str(i), "image": pictures[i]}
                                              for i in range(images)], wait=3600)
        if imported.status != "succeeded":
            raise SystemExit(f"import failed: {imported.error}")
        record["import_images_per_s"] = round(images / (time.perf_counter() - start))
        one = base64.b64encode(pictures[0]).decode()
        record["search by image"] = timed_searches(lambda _: client._call(
            "POST", "/v1/galleries/images/search", json={"image": one, "k": 10}),
            queries[:100])[0]
    finally:
        stack.down()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vectors", type=int, default=10_000,
                        help="items added and searched through the API")
    parser.add_argument("--images", type=int, default=2_000)
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    record = {"dim": args.dim, "queries": QUERIES,
              "index": [index_run(n, args.dim) for n in args.sizes],
              "platform": platform_run(args.vectors, args.images, QUERIES)}
    records.emit(args, record, markdown)


def markdown(record: dict) -> str:
    """The docs' tables of one run's JSON record (what --json prints)."""
    lines = [f"In-memory index, d = {record['dim']}, {record['queries']} queries one at a time, "
             "k = 10:", "",
             "| items | index | add items/s | p50 ms | p99 ms | recall@10 | filter 10 %: p50 ms "
             "| p99 ms | recall@10 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["index"]:
        a, f = r["all"], r["filter 10 %"]
        lines.append(f"| {r['items']:,} | {r['index']} | {r['add_items_per_s']:,} | "
                     f"{a['p50_ms']:.2f} | {a['p99_ms']:.2f} | {a['recall_at_10']:.3f} | "
                     f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['recall_at_10']:.3f} |")
    p = record["platform"]
    lines += ["", f"Through the API (SQLite, one client; d = {p['dim']}):", "",
              "| what | figure |", "|---|---|",
              f"| add vectors, 1,000 per request | {p['add_vectors_per_s']:,} items/s |",
              f"| add images, 64 per request (answered when written) | "
              f"{p['add_images_per_s']:,} items/s |",
              f"| add {p['images']:,} images as one import job | "
              f"{p['import_images_per_s']:,} items/s |"]
    for name in ("search", "search filter 10 %", "search by image"):
        size = f"{p['vectors']:,} items" if name != "search by image" else \
            f"{p['images']:,} items"
        lines.append(f"| {name} ({size}) | p50 {p[name]['p50_ms']:.1f} ms, "
                     f"p99 {p[name]['p99_ms']:.1f} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
