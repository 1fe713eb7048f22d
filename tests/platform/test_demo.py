"""`mec demo` end to end (small budget): every step's output, and nothing left running."""

import json
import subprocess
import sys
from pathlib import Path


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def test_demo__whole_loop_and_clean_exit(tmp_path):
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "mec_client", "demo", "--dataset",
                           "synthetic",
                           "--max-steps", "8", "--data-dir", str(workdir), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    for step in range(1, 7):
        assert f"[{step}/6]" in log
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["pretrain"]["steps"] == 8
    assert all(0 < summary["knn_top1"][k] <= 100 for k in ("mec", "random_init", "raw_pixels"))
    assert "raw pixels" in log
    assert set(summary["endpoints"]) == {"embed", "knn"}
    assert len(summary["retrievals"]) == 3
    assert all(len(r["neighbours"]) == 5 and r["dim"] == 1024 for r in summary["retrievals"])
    assert sorted(summary["stopped"]) == ["api", "torchserve", "worker"]
    assert "kNN top-1" in log and "summary:" in log
    assert processes_mentioning(str(workdir)) == []
