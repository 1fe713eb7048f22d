"""Uploaded checkpoints: a real one becomes a model that can be evaluated; a crafted
pickle runs no code, because the import job loads with weights_only."""

import os

import torch
from test_jobs import TINY

from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.train import train


class Exploit:
    """Unpickling this runs a shell command (pickle calls os.system on load)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def upload(platform, path, name="uploaded"):
    with open(path, "rb") as f:
        return platform.client.post("/v1/models", data={"name": name},
                                    files={"checkpoint": ("ckpt.pt", f)})


def test_an_uploaded_checkpoint_becomes_a_model_that_can_be_evaluated(platform, tmp_path):
    config = TrainConfig(**(TINY | {"max_steps": 2}))
    train(config, tmp_path / "run")
    r = upload(platform, checkpoint.latest(tmp_path / "run" / "checkpoints"))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "import" and job["status"] == "queued"
    done = platform.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    model = next(m for m in platform.get("/v1/models")["data"] if m["job_id"] == job["id"])
    assert model["name"] == "uploaded" and model["backbone"] == "convnet"
    assert os.path.exists(model["artifacts"]["encoder"])
    evaluation = platform.post("/v1/jobs", {"kind": "evaluate", "config": {
        "job_id": job["id"], "protocol": "knn", "k": 10, "train_limit": 128, "test_limit": 64}})
    finished = platform.wait_status(evaluation["id"], ("succeeded", "failed"))
    assert finished["status"] == "succeeded", finished["error"]


def test_a_crafted_pickle_runs_no_code_and_fails_its_import(platform, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Exploit(marker), "config": {}}, evil)
    r = upload(platform, evil, name="evil")
    assert r.status_code == 202, r.text
    done = platform.wait_status(r.json()["id"], ("succeeded", "failed"))
    assert done["status"] == "failed"
    assert "not a usable MEC checkpoint" in done["error"]
    assert "Weights only load failed" in done["error"]
    assert not os.path.exists(done["config"]["checkpoint"])  # the failed upload is not kept
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file is a real exploit: unsafe loading runs it
    assert marker.exists()


def test_bad_uploads_get_clear_errors_and_create_no_job(platform, tmp_path):
    before = platform.get("/v1/jobs", params={"kind": "import"})["count"]
    r = platform.client.post("/v1/models", files={"checkpoint": ("c.pt", b"x")})
    assert r.status_code == 422 and "name" in r.json()["detail"]
    r = platform.client.post("/v1/models", data={"name": "n"})
    assert r.status_code == 422 and "checkpoint" in r.json()["detail"]
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * (9 * 2**20))  # the fixture sets MEC_MAX_UPLOAD_MB=8
    r = upload(platform, big)
    assert r.status_code == 413 and r.json()["detail"].startswith("body: ")
    assert "MEC_MAX_UPLOAD_MB" in r.json()["detail"]
    assert platform.get("/v1/jobs", params={"kind": "import"})["count"] == before
