"""The GPU check: one command that proves the platform's GPU path and records its figures.

    bench/gpu_check.sh [--out FILE] [--dry-run] [--only STEP ...]

Steps, each in its own process with a time limit (the whole under 10 minutes on one GPU):

1. `environment`: torch, CUDA, cuDNN and NCCL versions, the GPUs, the driver, the CPU;
2. `cuda_tests`: the test suite's CUDA-marked tests (`pytest -m cuda`);
3. `train_resnet50_224`, `train_resnet18_32`: training throughput in bf16 of `mec train`
   (and `method: byol`) against lightly's BYOL loop with channels_last and autocast on the
   same GPU (bench/bench_peer.py, interleaved repeats);
4. `ddp_nccl`: one process per GPU through torchrun (NCCL), when more than one is visible;
5. `serving`: TorchServe on the GPU under bench/bench_serving.py, when Java and TorchServe
   are installed;
6. `loss`: the objective's benchmark (bench/bench_loss.py) on CUDA.

The record (one JSON object: the host, each step's status, seconds, figures and, for a
skipped step, why) goes to `--out` (default docs/performance/gpu/<date>.json). Without CUDA,
or with --dry-run, each step runs its smallest version on the CPU or is skipped saying why,
so that the check is known to work before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import records

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/mec_core/test_cuda.py", "tests/mec_core/test_system.py"]

# (backbone, image size, batch) of the two training points: the paper's network at
# ImageNet's size, and the small-image recipe's at CIFAR's; a dry run keeps the backbones
# and shrinks the images and the batch
TRAIN_POINTS = {"train_resnet50_224": ("resnet50", 224, 128),
                "train_resnet18_32": ("resnet18", 32, 512)}


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cpu": records.host()}
    if torch.cuda.is_available():
        env |= {"cudnn": torch.backends.cudnn.version(),
                "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                "gpus": [{"name": torch.cuda.get_device_name(i),
                          "memory_gib": round(torch.cuda.get_device_properties(i).total_memory
                                              / 2**30, 1),
                          "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                         for i in range(torch.cuda.device_count())]}
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    return env


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[bool, str, float]:
    """(succeeded, output tail, seconds) of a command run from the repository's root."""
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=env)
        ok, out = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        ok, out = False, f"timed out after {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
    return ok, out[-4000:], time.perf_counter() - started


def last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def step_tests(cuda: bool) -> dict:
    ok, out, seconds = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs",
                            "-p", "no:cacheprovider", *CUDA_TESTS], 300)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out)}
    status = "failed" if not ok else ("passed" if cuda else "skipped")
    return {"status": status, "seconds": seconds, "counts": counts,
            **({} if cuda else {"reason": "no CUDA GPU: every CUDA-marked test skips"}),
            **({} if ok else {"output": out})}


def step_train(name: str, device: str, dry: bool) -> dict:
    backbone, size, batch = TRAIN_POINTS[name]
    shape = (["--batch-size", "8", "--steps", "1", "--warmup", "2", "--repeats", "1",
              "--workers", "0"] if dry else
             ["--batch-size", str(batch), "--steps", "20", "--warmup", "5", "--repeats", "2"])
    size = min(size, 32) if dry else size
    ok, out, seconds = run([sys.executable, "bench/bench_peer.py", "--device", device,
                            "--precision", "bf16", "--backbone", backbone, "--size", str(size),
                            "--loops", "mec", "byol", "lightly-tuned", *shape, "--json"], 420)
    record = {"status": "passed" if ok else "failed", "seconds": seconds, "device": device,
              "size": size}
    if ok:
        summary = last_json(out)
        loops = {k: v["median"] for k, v in summary["loops"].items()}
        record |= {"batch": summary["batch"], "images_per_sec": loops,
                   "mec_over_lightly_tuned": loops["mec"] / loops["lightly-tuned"]}
    else:
        record["output"] = out
    return record


def step_ddp(gpus: int) -> dict:
    if gpus < 2:
        return {"status": "skipped", "reason": f"{gpus} GPU visible: DDP needs 2 or more"}
    out_dir = Path("/tmp") / f"gpu-check-ddp-{os.getpid()}"
    ok, out, seconds = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc-per-node={gpus}", "-m", "mec_core.cli", "train",
                            "--dataset", "synthetic", "--backbone", "resnet18", "--image-size",
                            "32", "--batch-size", str(256 * gpus), "--max-steps", "30",
                            "--processes", str(gpus), "--device", "cuda", "--precision", "bf16",
                            "--monitor-every", "0", "--out", str(out_dir)], 300)
    record = {"status": "passed" if ok else "failed", "seconds": seconds, "processes": gpus}
    if ok:
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
        record["images_per_sec"] = rates[-1] if rates else None
    else:
        record["output"] = out
    return record


def step_serving(cuda: bool) -> dict:
    if not cuda:
        return {"status": "skipped", "reason": "no CUDA GPU: the CPU's serving figures are "
                "docs/performance.md's (python bench/bench_serving.py)"}
    missing = [name for name, there in (("java", shutil.which("java")),
                                        ("torchserve", importlib.util.find_spec("ts")))
               if not there]
    if missing:
        return {"status": "skipped", "reason": f"not installed here: {', '.join(missing)}"}
    ok, out, seconds = run([sys.executable, "bench/bench_serving.py", "--concurrency", "8", "32",
                            "--rounds", "3", "--seconds", "4", "--json"], 420)
    return {"status": "passed" if ok else "failed", "seconds": seconds,
            **({"result": last_json(out)} if ok else {"output": out})}


def step_loss(device: str, dry: bool) -> dict:
    sizes = ["256:2048"] if dry else ["1024:2048", "4096:2048", "16384:2048", "4096:512"]
    ok, out, seconds = run([sys.executable, "bench/bench_loss.py", "--device", device,
                            "--repeats", "1" if dry else "10", "--sizes", *sizes, "--json"], 300)
    return {"status": "passed" if ok else "failed", "seconds": seconds, "device": device,
            **({"rows": last_json(out)["rows"]} if ok else {"output": out})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "docs" / "performance" / "gpu" /
                        f"{datetime.date.today().isoformat()}.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="the smallest version of each step, on the CPU")
    parser.add_argument("--only", nargs="+", metavar="STEP",
                        help="run these steps alone (the environment is always reported)")
    args = parser.parse_args()
    started = time.perf_counter()
    env = environment()
    cuda = env["cuda_available"] and not args.dry_run
    dry = not cuda
    if dry:  # every step on the CPU, also where a GPU is visible
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = "cuda" if cuda else "cpu"
    print(f"GPU check: {'dry run on the CPU' if dry else 'on ' + env['gpus'][0]['name']}",
          file=sys.stderr)
    steps = {"environment": {"status": "passed", **env}}
    plan = [("cuda_tests", lambda: step_tests(cuda)),
            *((name, lambda name=name: step_train(name, device, dry)) for name in TRAIN_POINTS),
            ("ddp_nccl", lambda: step_ddp(len(env.get("gpus", [])) if cuda else 0)),
            ("serving", lambda: step_serving(cuda)),
            ("loss", lambda: step_loss(device, dry))]
    if args.only:
        unknown = set(args.only) - {name for name, _ in plan}
        if unknown:
            parser.error(f"unknown steps {sorted(unknown)}; the steps: "
                         f"{', '.join(name for name, _ in plan)}")
        plan = [(name, step) for name, step in plan if name in args.only]
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dry_run": dry, "seconds": 0.0, "steps": steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, step in plan:
        steps[name] = step()
        said = steps[name].get("reason", "")
        print(f"{name}: {steps[name]['status']} ({steps[name].get('seconds', 0):.0f} s) {said}",
              file=sys.stderr)
        record["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(record, indent=1) + "\n")  # a killed check keeps its steps
    print(json.dumps({name: s["status"] for name, s in steps.items()}))
    if any(s["status"] == "failed" for s in steps.values()):
        sys.exit(f"a step failed; the record is {args.out}")


if __name__ == "__main__":
    main()
