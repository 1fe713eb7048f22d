"""Routes in-process (FastAPI's TestClient on the embedded SQLite database and broker):
fast checks that pin a failure to a line. tests/integration runs the same API as a
real process on PostgreSQL and Redis."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from api.deps import ROW_CACHE_SECONDS
from api.main import app
from mec_platform import keys
from mec_platform.db import session_scope
from mec_platform.tables import Job, Metric

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "train_limit": 64, "max_steps": 2}


def _jobs() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count(Job.id)))


def test_submit__commits_the_row_then_rings_its_queue(client, held):
    r = client.post("/v1/jobs", json={"kind": "pretrain", "name": "r", "tags": ["in-process"],
                                      "config": TINY})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["queue"] == "gpu" and job["kind"] == "pretrain"
    assert job["config"]["recipe"] == "small"  # the stored config names its recipe
    assert job["id"] in held()
    listed = client.get("/v1/jobs", params={"status": "queued", "kind": "pretrain",
                                            "tag": "in-process"}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    assert client.get(f"/v1/jobs/{job['id']}").json()["progress"]["percent"] == 0.0


def test_bad_input__422_names_the_field_and_creates_nothing(client):
    before = _jobs()
    r = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"batch_size": 0}})
    assert r.status_code == 422 and r.json()["detail"].startswith("config.batch_size:")
    r = client.post("/v1/jobs", json={"kind": "pretrain",
                                      "config": TINY | {"data_dir": "/etc"}})
    assert r.status_code == 422 and r.json()["detail"].startswith("config.data_dir:")
    r = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {
        "device": "cpu", "precision": "fp16"}})
    assert r.status_code == 422 and r.json()["detail"].startswith("config.precision:")
    assert "choose one of auto, fp32, bf16" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"kind": "evaluate", "config": {"job_id": 10**9}})
    assert r.status_code == 404 and r.json()["detail"].startswith("config.job_id:")
    r = client.get("/v1/jobs", params={"kind": "train"})
    assert r.status_code == 422 and r.json()["detail"].startswith("kind:")
    r = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"epoch": 2}})
    assert r.status_code == 422 and r.json()["detail"] == \
        "config.epoch: Extra inputs are not permitted (did you mean epochs?)"
    r = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"colour": 2}})
    assert r.json()["detail"] == "config.colour: Extra inputs are not permitted"  # none near
    assert _jobs() == before


def test_idempotency_key__second_submission_returns_the_first(client):
    spec = {"kind": "pretrain", "config": TINY}
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-routes-1"})
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-routes-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


def test_cancel__queued_at_once_then_409(client):
    job = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert client.post("/v1/jobs/999999999/cancel").status_code == 404


def test_metrics__downsampled_with_the_newest_step(client):
    job = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    with session_scope() as s:
        s.execute(insert(Metric), [{"job_id": job["id"], "step": i, "epoch": 0,
                                    "name": "loss", "value": float(i)} for i in range(1, 101)])
    r = client.get(f"/v1/jobs/{job['id']}/metrics", params={"max_points": 10}).json()
    assert r["stride"] == 10 and r["last_step"] == 100
    assert r["series"]["loss"]["steps"] == list(range(10, 101, 10))
    later = client.get(f"/v1/jobs/{job['id']}/metrics", params={"since_step": 95}).json()
    assert later["series"]["loss"]["steps"] == [96, 97, 98, 99, 100]
    times = later["series"]["loss"]["times"]  # when each was logged: here, just now
    assert len(times) == 5 and all(abs(t - time.time()) < 60 for t in times)


def test_job__the_resolved_config_beside_the_one_submitted(client):
    job = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    assert job["config"]["image_size"] is None and job["config"]["monitor_every"] is None
    assert {k: job["resolved_config"][k] for k in ("image_size", "channels_last",
                                                   "monitor_every")} == {
        "image_size": 32, "channels_last": True, "monitor_every": None}  # steps not known yet
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(total_steps=50))
    assert client.get(f"/v1/jobs/{job['id']}").json()["resolved_config"]["monitor_every"] == 5
    with session_scope() as s:  # a row no config of today reads: shown as stored, no 500
        s.execute(update(Job).where(Job.id == job["id"]).values(config={"gone": 1}))
    assert client.get(f"/v1/jobs/{job['id']}").json()["resolved_config"] is None


def test_keys__missing_unknown_and_revoked(client):
    anonymous = TestClient(app)
    assert anonymous.get("/v1/jobs").status_code == 401
    r = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer mec_nope"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown API key"
    assert client.get("/v1/jobs").status_code == 200
    with session_scope() as s:
        keys.revoke(s, client.key[:12])
    time.sleep(ROW_CACHE_SECONDS)  # each process reads a key's row at most this often
    r = client.get("/v1/jobs")
    assert r.status_code == 403 and "was revoked" in r.json()["detail"]


def test_models__404_for_a_missing_model(client):
    assert client.get("/v1/models/999999999").status_code == 404
    r = client.post("/v1/models/999999999/deploy")
    assert r.status_code == 404 and r.json()["detail"] == "model 999999999 not found"


def test_undeploy__a_body_with_a_field_is_refused_not_ignored(client, synthetic_model):
    """An undeploy stops every version: {"version": 1} must not undeploy them all."""
    url = f"/v1/models/{synthetic_model[1]}/undeploy"
    before = _jobs()
    r = client.post(url, json={"version": 1})
    assert r.status_code == 422 and r.json()["detail"] == \
        "version: Extra inputs are not permitted"
    assert _jobs() == before
    for body in ({}, None):
        r = client.post(url, json=body)
        assert r.status_code == 202 and r.json()["config"]["action"] == "undeploy", r.text
    assert _jobs() == before + 2
