"""bench/bench_datasets.py on a tiny archive: a record of the upload and the first read,
through a real S3 server and from local disk, and its table."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_datasets.py"


def test_bench_datasets__records_both_paths_and_reprints_them(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--megabytes", "2", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)
    assert record["images"] > 30 and record["host"]["cores"] >= 1
    for field in ("upload_seconds", "local_copy_seconds", "first_epoch_store_seconds",
                  "first_epoch_local_seconds"):
        assert record[field] > 0
    (tmp_path / "r.json").write_text(done.stdout)
    table = subprocess.run([sys.executable, str(SCRIPT), "--report", str(tmp_path / "r.json")],
                           capture_output=True, text=True, check=True).stdout
    assert "| upload (checked, arranged, stored)" in table and "2 MB archive" in table
