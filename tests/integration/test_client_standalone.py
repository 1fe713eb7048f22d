"""`pip install ./client` in a fresh virtual environment, without torch or the platform:
the Python client and the `mec` client commands work against the running platform."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv")
    source = shutil.copytree(ROOT / "client", venv / "src",  # pip builds in the tree
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(source)],
                   check=True, timeout=600)
    return venv


def test_the_client_alone_installs_without_torch_and_talks_to_the_platform(
        client_venv, platform, tmp_path):
    python = client_venv / "bin" / "python"
    installed = subprocess.run([python, "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "mec-client" in names and not names & {"torch", "mec-platform", "fastapi",
                                                   "sqlalchemy", "celery", "numpy"}
    env = {"MEC_API_URL": platform.url, "MEC_API_KEY": platform.key, "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "COLUMNS": "160"}
    code = ("from mec_client import Client\n"
            "c = Client()\n"
            "job = c.submit({'kind': 'pretrain', 'name': 'standalone', 'config': {"
            "'dataset': 'synthetic', 'backbone': 'convnet', 'max_steps': 2, 'batch_size': 16,"
            "'train_limit': 64, 'proj_dim': 32, 'epochs': 1}})\n"
            "print(c.wait(job.id, timeout=240, poll=0.5).status)\n")
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "succeeded"

    mec = client_venv / "bin" / "mec"
    listed = subprocess.run([mec, "jobs", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "standalone" in [j["name"] for j in json.loads(listed.stdout)["data"]]
    table = subprocess.run([mec, "jobs", "list"], env=env, capture_output=True, text=True,
                           timeout=120, cwd=tmp_path).stdout
    assert "standalone" in table and "succeeded" in table
    helped = subprocess.run([mec, "--help"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path).stdout
    commands = {line.split()[0] for line in helped.split("Commands:")[1].splitlines()
                if line.strip()}
    assert commands == {"datasets", "gallery", "jobs", "login", "models", "search"}  # no platform's
    assert list(tmp_path.iterdir()) == []  # nothing written in the working directory
