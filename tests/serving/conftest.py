"""A tiny trained encoder and its archives, shared by the serving tests."""

import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = ["--dataset", "synthetic", "--backbone", "convnet", "--batch-size", "32",
         "--max-steps", "3", "--proj-dim", "32", "--pred-hidden-dim", "16",
         "--train-limit", "256"]


@pytest.fixture(scope="session", params=["fp32", "bf16"])
def trained(request, tmp_path_factory):
    """(checkpoint path, export dir, model store with tiny.mar and tiny-knn.mar) of an
    encoder trained in each precision (pinned: "auto" would pick by the CPU)."""
    root = tmp_path_factory.mktemp(f"serving-{request.param}")
    subprocess.run([sys.executable, "-m", "mec_core.cli", "train", *TRAIN, "--precision",
                    request.param, "--out", str(root / "run")], check=True,
                   capture_output=True)
    checkpoint = root / "run" / "checkpoints" / "step_00000003.pt"
    subprocess.run([sys.executable, "-m", "mec_core.cli", "export", "--checkpoint",
                    str(checkpoint), "--out", str(root / "export")], check=True,
                   capture_output=True)
    from serving.package import package

    package(checkpoint, root / "store", "tiny", reference_limit=400, torch_threads=1)
    return checkpoint, root / "export", root / "store"


@pytest.fixture
def file_mappings():
    """mappings(path): this process's mappings of the file `path` (Linux), each with its
    address range, permissions ("r--s": read-only, shared) and smaps counters (kB)."""
    def mappings(path: Path) -> list[dict]:
        out, current = [], None
        for line in Path("/proc/self/smaps").read_text().splitlines():
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(a, 16) for a in fields[0].split("-"))
                current = ({"start": start, "end": end, "perms": fields[1]}
                           if fields[-1] == str(path) else None)
                if current is not None:
                    out.append(current)
            elif current is not None and fields[0].endswith(":") and len(fields) == 3:
                current[fields[0][:-1]] = int(fields[1])
        return out
    return mappings
