"""The API's embed route against TorchServe called directly, side by side: what the extra
hop (key check, model lookup, forwarding with the platform's TorchServe key) costs apps.

    python bench/bench_embed_route.py [--concurrency 32] [--rounds 5] [--seconds 6] [--json]
    python bench/bench_embed_route.py --report docs/performance/serving/*embed-route*.json

A whole platform (`mec up`'s stack: API, worker, TorchServe) in a temporary directory;
a resnet18 (small stem, global pooling, 32 px) pretrained for one step through the API and
deployed with the platform's defaults. ApacheBench's keep-alive clients post one PNG per
request to `POST /v1/models/{id}/embed` (with an API key of scope `embed`) and to
TorchServe's `/predictions/mec-{id}` (with TorchServe's key), the two alternating in
rounds; the figure is the median ratio of the rounds, with its range. Beside it, the CPU
the API process spends per request (milliseconds), which the machine's noise moves less.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import records
from bench_serving import clients, pngs

from mec_client import Client
from mec_platform.stack import Ports, Stack
from serving.client import Keys

CONFIG = {"dataset": "synthetic", "image_size": 32, "backbone": "resnet18", "batch_size": 16,
          "max_steps": 1, "epochs": 1, "train_limit": 64, "proj_dim": 256, "feature_grid": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    root = Path(tempfile.mkdtemp(prefix="mec-bench-embed-"))
    stack = Stack(root, Ports.any_free())
    try:
        stack.up()
        client = Client(stack.api_url, stack.create_key("bench"))
        job = client.wait(client.submit({"kind": "pretrain", "config": CONFIG}).id, poll=0.5)
        model = next(m for m in client.models().data if m.job_id == job.id)
        deployed = client.wait(client.deploy(model.id).id, poll=0.5)
        if deployed.status != "succeeded":
            raise SystemExit(f"deploy failed: {deployed.error}")
        image = root / "image.png"
        image.write_bytes(pngs(1)[0])
        app_key = stack.create_key("app")  # every scope but admin, embed among them
        served = Keys.read(stack.settings.torchserve_home).inference
        sides = {
            "api": (stack.api_url, f"v1/models/{model.id}/embed", app_key),
            "torchserve": (stack.settings.torchserve_inference_url,
                           f"predictions/mec-{model.id}", served),
        }
        assert httpx.post(f"{stack.api_url}/{sides['api'][1]}", content=image.read_bytes(),
                          headers={"Authorization": f"Bearer {app_key}",
                                   "Content-Type": "image/png"}).status_code == 200
        for url, path, key in sides.values():  # warm-up, alike: pools, caches, threads
            clients(url, key, image, args.concurrency, args.seconds, path=path)
        api = psutil.Process(stack.pid("api"))

        def measured(side: str) -> dict:
            before = api.cpu_times()
            done = clients(sides[side][0], sides[side][2], image, args.concurrency,
                           args.seconds, path=sides[side][1])
            after = api.cpu_times()
            cpu = after.user + after.system - before.user - before.system
            return done | {"api_cpu_ms_per_request": round(1e3 * cpu / done["requests"], 3)}
        rounds = []
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            rounds.append({side: measured(side) for side in order})
            time.sleep(1)
    finally:
        stack.down()
    ratios = [r["api"]["throughput"] / r["torchserve"]["throughput"] for r in rounds]
    cpu = [r["api"]["api_cpu_ms_per_request"] for r in rounds]
    record = {"concurrency": args.concurrency, "rounds": rounds,
              "ratio": {"median": round(statistics.median(ratios), 3),
                        "min": round(min(ratios), 3), "max": round(max(ratios), 3)},
              "api_cpu_ms_per_request": {"median": statistics.median(cpu), "min": min(cpu),
                                         "max": max(cpu)}}
    records.emit(args, record, markdown)


def markdown(record: dict) -> str:
    """The docs' table of one run's JSON record (what --json prints)."""
    lines = ["| round | API img/s | API p99 ms | API CPU ms/request | TorchServe img/s "
             "| TorchServe p99 ms | API / direct |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(record["rounds"], 1):
        api, direct = r["api"], r["torchserve"]
        lines.append(f"| {i} | {api['throughput']:.1f} | {api['p99_ms']:.0f} | "
                     f"{api.get('api_cpu_ms_per_request', float('nan')):.2f} | "
                     f"{direct['throughput']:.1f} | {direct['p99_ms']:.0f} | "
                     f"{100 * api['throughput'] / direct['throughput']:.1f} % |")
    q = record["ratio"]
    lines.append(f"\nAPI / direct at {record['concurrency']} clients: median "
                 f"{100 * q['median']:.1f} % [{100 * q['min']:.1f}–{100 * q['max']:.1f}]")
    if "api_cpu_ms_per_request" in record:
        c = record["api_cpu_ms_per_request"]
        lines.append(f"API CPU per request: median {c['median']:.2f} ms "
                     f"[{c['min']:.2f}–{c['max']:.2f}]")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
