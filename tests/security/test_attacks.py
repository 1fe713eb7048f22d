"""The attacks of docs/reliability.md's threat list, each written as the attack: the
request, what must be answered, then that nothing leaked or was lost. On the real API,
worker and TorchServe, on SQLite and on PostgreSQL+Redis."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from harness import b64png, full_platform

from mec_core import checkpoint
from mec_core.config import TrainConfig
from mec_core.train import train
from serving.client import Keys

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "max_steps": 4, "log_every": 2}
NDJSON = "application/x-ndjson"



@pytest.fixture(scope="module", params=["embedded", "postgres+redis"])
def served(request, tmp_path_factory):
    """A platform with a small model deployed in batches of 8 (requests wait up to 200 ms
    for batch-mates)."""
    root = tmp_path_factory.mktemp(f"attacks-{request.param.replace('+', '_')}")
    with full_platform(root, request.param, MEC_MAX_QUEUED_IMPORTS="4") as platform:
        job = platform.post("/v1/jobs", {"kind": "pretrain", "config": TINY})
        assert platform.wait_status(job["id"], ("succeeded", "failed"))["status"] == \
            "succeeded"
        model = next(m for m in platform.get("/v1/models")["data"]
                     if m["job_id"] == job["id"])
        deploy = platform.post(f"/v1/models/{model['id']}/deploy", {
            "workers": 1, "batch_size": 8, "max_batch_delay_ms": 200, "gallery_limit": 64},
            expect=202)
        done = platform.wait_status(deploy["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        yield platform, model["id"]


def _jobs(platform) -> int:
    return platform.get("/v1/jobs", params={"limit": 1})["count"]


def test_paths_outside_the_data_roots_are_refused_wherever_they_enter(served):
    """Finding 2: deploy's reference_data_dir, a sweep's space and a NUL byte in data_dir."""
    platform, model_id = served
    before = _jobs(platform)
    attacks = [
        (f"/v1/models/{model_id}/deploy", {"reference_data_dir": "/etc"}, "reference_data_dir"),
        ("/v1/jobs", {"kind": "sweep", "config": {
            "base": TINY, "space": {"data_dir": {"choice": ["/usr/share/datasets", "/etc"]}},
            "algorithm": "grid"}}, "config.space.data_dir"),
        ("/v1/jobs", {"kind": "pretrain", "config": TINY | {"data_dir": "/tmp/a\0b"}},
         "config.data_dir"),
    ]
    for url, body, field in attacks:
        r = platform.client.post(url, json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), r.text
    assert _jobs(platform) == before  # nothing queued


def test_an_uploaded_checkpoints_stored_data_dir_does_not_reach_the_gallery(served, tmp_path):
    """Finding 2: a checkpoint whose stored config names /etc imports, but its deploy
    refuses to build a gallery from /etc and serves nothing of it."""
    platform, _ = served
    train(TrainConfig(**(TINY | {"max_steps": 2})), tmp_path / "run")
    ckpt = torch.load(checkpoint.latest(tmp_path / "run" / "checkpoints"), weights_only=True)
    ckpt["config"]["data_dir"] = "/etc"
    ckpt["config"]["dataset"] = "imagefolder"
    torch.save(ckpt, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pt", "rb") as f:
        job = platform.post("/v1/models", data={"name": "evil"}, expect=202,
                            files={"checkpoint": ("evil.pt", f)})
    assert platform.wait_status(job["id"], ("succeeded", "failed"))["status"] == "succeeded"
    model = next(m for m in platform.get("/v1/models")["data"] if m["job_id"] == job["id"])
    deploy = platform.post(f"/v1/models/{model['id']}/deploy", {"workers": 1}, expect=202)
    done = platform.wait_status(deploy["id"], ("succeeded", "failed"))
    assert done["status"] == "failed" and "config.data_dir" in done["error"], done["error"]
    assert "/etc is outside the data roots" in done["error"]
    assert platform.get(f"/v1/models/{model['id']}")["deployment"] is None


def test_an_import_queued_for_a_deleted_gallery_lands_nowhere(served):
    """Finding 3: an import waits in the queue; its gallery is deleted and one of the same
    name created (and another one after it). The import fails with that reason, and
    the new galleries hold nothing of it."""
    platform, model_id = served
    dim = platform.post("/v1/galleries", {"name": "victim", "model_id": model_id})["dim"]
    os.killpg(platform.workers["w1"].pid, signal.SIGKILL)  # nobody runs the import yet
    platform.workers["w1"].wait()
    rng = np.random.default_rng(0)
    lines = "".join(json.dumps({"id": f"secret-{i}", "vector": rng.normal(size=dim).tolist(),
                                "metadata": {"owner": "a"}}) + "\n" for i in range(300))
    job = platform.post("/v1/galleries/victim/items", content=lines.encode(), expect=202,
                        headers={"Content-Type": NDJSON})
    assert platform.client.delete("/v1/galleries/victim").status_code == 204
    again = platform.post("/v1/galleries", {"name": "victim", "model_id": model_id})
    other = platform.post("/v1/galleries", {"name": "other", "model_id": model_id})
    assert platform.client.get(f"/v1/galleries/victim/imports/{job['id']}").status_code == 404
    platform.start_worker("w1")
    done = platform.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "failed" and "deleted" in done["error"], done
    assert platform.get("/v1/galleries/victim")["items"] == 0 == again["items"]
    assert platform.get("/v1/galleries/other")["items"] == 0 == other["items"]


def test_one_bad_request_fails_alone_in_its_batch(served):
    """Finding 4: 1 request with k = 1e309 and 7 good ones at once, many rounds, straight
    to TorchServe (batches of 8) and through the API: only the bad one is refused."""
    platform, model_id = served
    good = json.dumps({"images": [b64png(1)], "k": 3}).encode()
    bad = b'{"images": ["' + b64png(2).encode() + b'"], "k": 1e309}'
    key = Keys.read(platform.torchserve.home).inference
    direct = f"{platform.torchserve.inference_url}/predictions/mec-{model_id}-knn"
    api = f"{platform.url}/v1/models/{model_id}/search"
    for url, headers, refused in ((direct, {"Authorization": f"Bearer {key}"}, 400),
                                  (api, dict(platform.client.headers), 422)):
        headers |= {"Content-Type": "application/json"}
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                codes = list(pool.map(lambda body, u=url, h=headers: httpx.post(
                    u, content=body, headers=h, timeout=60).status_code, [bad] + [good] * 7))
                assert codes == [refused] + [200] * 7, (url, codes)


def test_a_flood_of_imports_is_bounded_per_key_and_per_project(served):
    """Finding 6: tiny imports as fast as one key can send them get 429 past the key's
    burst; with no worker free, a project holds at most MEC_MAX_QUEUED_IMPORTS queued,
    and a deploy submitted next is not behind a flood."""
    platform, model_id = served
    dim = platform.post("/v1/galleries", {"name": "flood", "model_id": model_id})["dim"]
    line = json.dumps({"id": "x", "vector": [1.0] * dim}).encode() + b"\n"
    os.killpg(platform.workers["w1"].pid, signal.SIGKILL)
    platform.workers["w1"].wait()
    codes = [platform.client.post("/v1/galleries/flood/items", content=line,
                                  headers={"Content-Type": NDJSON}).status_code
             for _ in range(8)]
    assert codes == [202] * 4 + [429] * 4, codes
    refused = platform.client.post("/v1/galleries/flood/items", content=line,
                                   headers={"Content-Type": NDJSON})
    assert "imports queued" in refused.json()["detail"]
    flooder = platform.new_key("flooder", "--scope", "embed", "--project", "flood")
    other = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {flooder}"})
    codes = [other.post("/v1/galleries/none/items", content=line,
                        headers={"Content-Type": NDJSON}).status_code for _ in range(25)]
    assert 429 in codes and codes.index(429) == 20, codes  # the burst (MEC_SUBMIT_BURST)
    assert "too many imports" in other.post("/v1/galleries/none/items", content=line, headers={
        "Content-Type": NDJSON}).json()["detail"]
    platform.start_worker("w1")
    queued = platform.get("/v1/jobs", params={"kind": "gallery", "status": "queued"})["data"]
    for job in queued:
        platform.wait_status(job["id"], ("succeeded", "failed"))


def test_vectors_float32_cannot_hold_are_refused_and_nothing_is_stored(served):
    """Finding 7: finite as float64 but not as float32 (1e39; 1e-46, zero once stored):
    422 naming why, on add and on search; the gallery holds nothing of them."""
    platform, model_id = served
    dim = platform.post("/v1/galleries", {"name": "floats", "model_id": model_id})["dim"]
    for vector, why in (([1e39] + [0.0] * (dim - 1), "float32's range"),
                        ([1e-46] * dim, "zero once")):
        r = platform.client.post("/v1/galleries/floats/items",
                                 json={"items": [{"id": "nan", "vector": vector}]})
        assert r.status_code == 422 and why in r.json()["detail"], r.text
        r = platform.client.post("/v1/galleries/floats/search", json={"vector": vector})
        assert r.status_code == 422 and why in r.json()["detail"], r.text
    assert platform.get("/v1/galleries/floats")["items"] == 0
    assert platform.client.get("/v1/galleries/floats/items/nan").status_code == 404


def _client(platform, name: str, *options: str) -> httpx.Client:
    """A client with a new key (`mec keys create --name name *options`)."""
    return httpx.Client(base_url=platform.url, timeout=30, headers={
        "Authorization": f"Bearer {platform.new_key(name, *options)}"})


def test_the_smaller_findings_on_the_real_api(served):
    """Finding 8: an empty delete filter, an Idempotency-Key reused with another body,
    control and bidi characters in names, the audit row of a refused body, the admin
    key's gallery list and the embedded database's mode."""
    platform, model_id = served
    attacker = _client(platform, "attacker")
    admin = _client(platform, "ops", "--scope", "admin", "--project", "ops")
    dim = platform.post("/v1/galleries", {"name": "keep", "model_id": model_id})["dim"]
    items = [{"id": f"v{i}", "vector": [1.0, float(i)] + [0.0] * (dim - 2)} for i in range(3)]
    assert platform.post("/v1/galleries/keep/items", {"items": items}, expect=200)
    # {"filter": {}} once deleted the whole gallery
    r = attacker.post("/v1/galleries/keep/delete", json={"filter": {}})
    assert r.status_code == 422 and r.json()["detail"].startswith("filter"), r.text
    assert platform.get("/v1/galleries/keep")["items"] == 3
    assert attacker.post("/v1/galleries/keep/delete", json={"all": True}).json() == {
        "deleted": 3}

    # an Idempotency-Key reused with another body once returned the first job silently
    before = _jobs(platform)
    spec = {"kind": "pretrain", "name": "once", "config": TINY}
    first = attacker.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    again = attacker.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    other = attacker.post("/v1/jobs", json=spec | {"name": "twice"},
                          headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert str(first.json()["id"]) in other.json()["detail"]
    # names that would rewrite a terminal or reverse what it shows
    for name in ("a\x1b[2Jb", "invoice\u202egpj.exe", "a\x00b", "a\u200fb", "a\x85b"):
        r = attacker.post("/v1/jobs", json={"kind": "pretrain", "name": name, "config": TINY})
        assert r.status_code == 422 and r.json()["detail"].startswith("name"), r.text
    assert _jobs(platform) == before + 1
    platform.wait_status(first.json()["id"], ("succeeded", "failed"))

    # a body refused once left an audit row with no key and no project
    assert attacker.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "batch_size": "x"}}).status_code == 422
    row = admin.get("/v1/audit", params={"limit": 1}).json()["data"][0]
    prefix = attacker.headers["Authorization"].removeprefix("Bearer ")[:len(row["key_prefix"])]
    assert (row["status"], row["path"], row["project"]) == (422, "/v1/jobs", "default")
    assert row["key_prefix"] == prefix and len(prefix) >= 8

    # the admin key once listed only project default's galleries
    shop = _client(platform, "shop", "--scope", "embed", "--project", "shop")
    assert "keep" in [g["name"] for g in admin.get("/v1/galleries").json()["data"]]
    assert "keep" not in [g["name"] for g in shop.get("/v1/galleries").json()["data"]]
    assert shop.get("/v1/galleries/keep").status_code == 404

    # the embedded database (key hashes) was world-readable
    if platform.backend == "embedded":
        files = list((platform.root / "data").glob("mec.db*"))
        assert files and {f.stat().st_mode & 0o777 for f in files} == {0o600}, files


def test_an_upload_cut_by_a_killed_api_leaves_no_staging_file(served):
    """Finding 8: kill -9 of the API while an NDJSON import streams in; the restarted API
    removes the staging folder no process holds any more (on its own disk, whatever the
    store: no worker of its host needed)."""
    platform, model_id = served
    dim = platform.post("/v1/galleries", {"name": "cut", "model_id": model_id})["dim"]
    staging = platform.root / "data" / "staging"
    line = (json.dumps({"id": "x", "vector": [1.0] * dim}) + "\n").encode()

    def slow_body():
        yield line
        platform.wait_for(lambda: list(staging.glob("upload-*/items.ndjson")), 30,
                          "the staging file")
        os.killpg(platform.api.pid, signal.SIGKILL)
        yield line

    with pytest.raises(httpx.TransportError):
        httpx.post(f"{platform.url}/v1/galleries/cut/items", content=slow_body(), timeout=30,
                   headers=dict(platform.client.headers) | {"Content-Type": NDJSON})
    platform.api.wait()
    [cut] = staging.glob("upload-*")
    platform.start_api()
    assert not cut.exists() and not list(staging.iterdir())
    assert platform.get("/v1/galleries/cut")["items"] == 0
