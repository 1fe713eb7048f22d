"""Everything a job writes goes through an S3 store (SeaweedFS), with nothing shared on
disk: the API, the workers and TorchServe each have a folder of their own, and share only
PostgreSQL, Redis and the store; TorchServe's host publishes its keys there (`mec
torchserve publish-keys`) and the others read them from there (MEC_TORCHSERVE_KEYS=store).
A dataset archive uploaded -> pretrain on dataset:// -> checkpoint and export in the store
-> kNN evaluation -> deploy (TorchServe downloads the archive from a presigned URL into its
own model store) -> embed, search and reference images through the API; a worker killed
with -9 mid-run -> another worker, on another folder, resumes from the checkpoint in the
store; TorchServe restarted on an empty model store (another host), with new keys, serves
the deployment again."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from unittest import mock

import pytest
from harness import images_archive, png, s3_platform

from mec_client import Client
from mec_platform.storage import open_store
from serving.torchserve import LocalTorchServe, unused_ports

pytestmark = pytest.mark.slow  # ~2 min in all: an S3 server, TorchServe started three times

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "log_every": 2, "checkpoint_every": 4, "warmup_epochs": 0.2,
        "lambda_warmup_epochs": 0.2}


def _torchserve(plat, model_store: str, s3_env: dict) -> LocalTorchServe:
    """TorchServe in a folder of its own, with an empty model store, allowed to download
    the store's archives (the pattern `mec up` gives it)."""
    with mock.patch.dict(os.environ, s3_env):
        pattern = open_store(plat.store_url, s3_env["MEC_S3_ENDPOINT_URL"]
                             ).presigned_pattern("archives")
    return LocalTorchServe(plat.root / "ts", plat.root / "ts" / model_store, *plat.ts_ports,
                           archive_urls=pattern)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, s3_server):
    """API, worker w1 and TorchServe, each in a folder of its own ("hosts")."""
    root = tmp_path_factory.mktemp("hosts")
    ports = unused_ports(3)
    with s3_platform(root, s3_server,
                     MEC_TORCHSERVE_INFERENCE_URL=f"http://127.0.0.1:{ports[0]}",
                     MEC_TORCHSERVE_MANAGEMENT_URL=f"http://127.0.0.1:{ports[1]}",
                     MEC_TORCHSERVE_KEYS="store") as plat:  # none reads TorchServe's folder
        plat.ts_ports = ports
        plat.torchserve = _torchserve(plat, "model-store", s3_server.env)
        try:
            plat.torchserve.start()
            # TorchServe's host: its keys (and each renewal) published in the store
            plat._spawn([str(Path(sys.executable).with_name("mec")), "torchserve",
                         "publish-keys", "--home", str(root / "ts"), "--interval", "0.5"],
                        "publish-keys.log", {"MEC_DATA_DIR": str(root / "ts")})
            plat.start_api(MEC_DATA_DIR=str(root / "api"))
            plat.start_worker("w1", MEC_DATA_DIR=str(root / "w1"))
            yield plat
        finally:
            plat.torchserve.stop()


def _objects(plat, s3_server, prefix: str) -> list[str]:
    listed = s3_server.s3().list_objects_v2(Bucket=plat.bucket, Prefix=f"platform/{prefix}")
    return [o["Key"].removeprefix("platform/") for o in listed.get("Contents", [])]


def _pretrain(plat, steps: int, **extra) -> dict:
    return plat.post("/v1/jobs", {"kind": "pretrain", "name": f"stored-{steps}", "config":
                                  TINY | {"max_steps": steps, "epochs": steps // 8 + 1} | extra})


def _deploy(plat, model_id: int, reference_limit: int | None = 64) -> dict:
    job = plat.post(f"/v1/models/{model_id}/deploy", {"reference_limit": reference_limit},
                    expect=202)
    done = plat.wait_status(job["id"], ("succeeded", "failed"), timeout=240)
    assert done["status"] == "succeeded", done["error"]
    return plat.get(f"/v1/models/{model_id}")["deployment"]


def _embeds(plat, model_id: int) -> bool:
    r = plat.client.post(f"/v1/models/{model_id}/embed", content=png(3),
                         headers={"Content-Type": "image/png"})
    return r.status_code == 200 and r.json()["dim"] > 0


def test_a_dataset_a_job_its_model_and_its_deployment_live_in_the_store(hosts, s3_server,
                                                                          tmp_path):
    plat = hosts
    archive = tmp_path / "shapes.tar.gz"
    images_archive(archive)
    client = Client(plat.url, plat.key)
    client.datasets.create("shapes")
    assert client.datasets.upload("shapes", archive, test_fraction=0.25).images == 240
    job = _pretrain(plat, 8, dataset="imagefolder", data_dir="dataset://shapes",
                    image_size=16, train_limit=None)
    assert job["config"]["data_dir"] == "dataset://shapes/1"
    done = plat.wait_status(job["id"], ("succeeded", "failed"), timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["checkpoint"] == f"{plat.store_url}/jobs/{job['id']}/checkpoints/step_00000008.pt"
    evaluation = client.wait(client.evaluate(job["id"], "knn", k=5).id, timeout=300, poll=0.5)
    assert evaluation.status == "succeeded", evaluation.error
    assert evaluation.result["test_size"] == 60
    model = next(m for m in plat.get("/v1/models")["data"] if m["job_id"] == job["id"])
    stored = set(_objects(plat, s3_server, f"jobs/{job['id']}/"))
    for name, ref in model["artifacts"].items():
        assert ref.startswith(f"{plat.store_url}/jobs/{job['id']}/"), (name, ref)
        assert ref.removeprefix(f"s3://{plat.bucket}/platform/") in stored
    # nothing left on the worker's disk once stored, nothing ever on the API's
    assert not (plat.root / "w1" / "artifacts" / "jobs" / str(job["id"])).exists()
    assert not (plat.root / "api" / "artifacts" / "jobs").exists()

    # the evaluation kept its features of the train images in the store; the deploy's
    # reference set, the same train images, reuses them (brought from the store)
    (features,) = _objects(plat, s3_server, f"features/mec-{model['id']}/")
    assert re.fullmatch(rf"features/mec-{model['id']}/[0-9a-f]{{64}}\.npz", features), features
    deployment = _deploy(plat, model["id"], reference_limit=None)
    assert deployment["reference_reused_from"] == evaluation.id
    assert deployment["reference_images"].startswith(f"{plat.store_url}/galleries/")
    name = deployment["name"]
    assert {f"archives/{name}-v1.mar", f"archives/{name}-knn-v1.mar"} <= set(
        _objects(plat, s3_server, "archives/"))
    # TorchServe downloaded them into its own model store; the worker kept none
    assert (plat.torchserve.store / f"{name}-v1.mar").is_file()
    assert not list((plat.root / "w1").rglob("*.mar"))
    assert _embeds(plat, model["id"])
    found = plat.client.post(f"/v1/models/{model['id']}/search", params={"k": 3},
                             content=png(4), headers={"Content-Type": "image/png"})
    assert found.status_code == 200, found.text
    item = found.json()["neighbours"][0][0]["id"]
    image = plat.client.get(f"/v1/models/{model['id']}/references/{item}/image")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # undeployed: its archives and pixels leave the store
    job = plat.post(f"/v1/models/{model['id']}/undeploy", expect=202)
    assert plat.wait_status(job["id"], ("succeeded", "failed"))["status"] == "succeeded"
    assert not [k for k in _objects(plat, s3_server, "archives/") if k.startswith(
        f"archives/{name}-")]
    assert not _objects(plat, s3_server, f"galleries/{name}-")
    # and TorchServe removed the copies it had downloaded (on unregistering a URL's archive)
    assert not list(plat.torchserve.store.glob(f"{name}-*.mar"))


def test_kill_9_mid_run__another_worker_resumes_from_the_stored_checkpoint(hosts, s3_server):
    plat = hosts
    job = _pretrain(plat, 120, checkpoint_every=4)
    plat.wait_for(lambda: (plat.get(f"/v1/jobs/{job['id']}")["checkpoint"] or "")
                  .startswith("s3://") and plat.get(f"/v1/jobs/{job['id']}")["progress"]
                  ["step"] >= 12, 180, "a checkpoint in the store")
    os.killpg(plat.workers["w1"].pid, signal.SIGKILL)  # no goodbye, no last checkpoint
    plat.workers["w1"].wait()
    plat.start_worker("w2", MEC_DATA_DIR=str(plat.root / "w2"))  # another host
    done = plat.wait_status(job["id"], ("succeeded", "failed"), timeout=400)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["resumes"] == 1
    steps = plat.get(f"/v1/jobs/{job['id']}/metrics", params={"name": ["loss"]})
    assert steps["series"]["loss"]["steps"] == list(range(1, 121))  # none lost or doubled
    logs = plat.get(f"/v1/jobs/{job['id']}/logs", params={"attempt": 2})["lines"]
    assert any("brought from the store" in line["line"] for line in logs), logs
    # the store keeps the newest three checkpoints
    assert len(_objects(plat, s3_server, f"jobs/{job['id']}/checkpoints/")) == 3

    model = next(m for m in plat.get("/v1/models")["data"] if m["job_id"] == job["id"])
    name = _deploy(plat, model["id"])["name"]
    # TorchServe back on another host: an empty model store, the archive from the store
    plat.torchserve.stop()
    plat.torchserve = _torchserve(plat, "another-model-store", s3_server.env)
    _restart(plat)
    assert (plat.torchserve.store / f"{name}-v1.mar").is_file()
    # restarted on the same host: its own copy of the archive is registered again
    plat.torchserve.stop()
    _restart(plat)


def _restart(plat) -> None:
    plat.torchserve.start()
    plat.wait_for(lambda: _embeds(plat, plat.get("/v1/models")["data"][0]["id"]), 120,
                  "the worker to register the deployment again")
