"""A queued job says why it waits, from the live workers' queues and capacity
(mec_platform.workers): no live worker on its queue, or more processes than any runs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete

from mec_platform.db import session_scope
from mec_platform.tables import Worker, utcnow

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "max_steps": 2}


@pytest.fixture
def workers(client):
    """Put workers (name, queues, processes, seconds since their last beat) in the table."""
    def put(*rows):
        with session_scope() as s:
            s.execute(delete(Worker))
            for name, queues, processes, ago in rows:
                s.add(Worker(name=name, host="h", queues=queues, device="cpu",
                             processes=processes, seen_at=utcnow() - timedelta(seconds=ago)))
    yield put
    put()


def _submit(client, processes):
    r = client.post("/v1/jobs", json={"kind": "pretrain",
                                      "config": TINY | {"processes": processes}})
    assert r.status_code == 201, r.text
    return r.json()


def test_waiting__names_the_missing_queue_or_the_processes_no_worker_runs(client, workers):
    workers(("cpu-only", ["cpu"], 8, 0))
    assert _submit(client, 1)["waiting"] == "no live worker takes queue 'gpu'"
    workers(("small", ["gpu", "cpu"], 1, 0), ("pair", ["gpu"], 2, 0),
            ("gone", ["gpu"], 8, 3600))  # a stale heartbeat does not count
    four = _submit(client, 4)
    assert four["waiting"].startswith("needs 4 processes; the largest live worker on queue "
                                      "'gpu' runs 2")
    assert _submit(client, 2)["waiting"] is None
    assert client.get(f"/v1/jobs/{four['id']}").json()["waiting"] == four["waiting"]
    listed = {j["id"]: j["waiting"] for j in client.get("/v1/jobs").json()["data"]}
    assert listed[four["id"]] == four["waiting"]
    assert [w["processes"] for w in client.get("/v1/workers").json()] == [2, 1]
    client.post(f"/v1/jobs/{four['id']}/cancel")
    assert client.get(f"/v1/jobs/{four['id']}").json()["waiting"] is None


def test_processes__batch_size_must_divide_among_them(client):
    r = client.post("/v1/jobs", json={"kind": "pretrain",
                                      "config": TINY | {"batch_size": 30, "processes": 4}})
    assert r.status_code == 422
    assert "batch_size 30 does not divide among 4 processes" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"processes": 65}})
    assert r.status_code == 422 and r.json()["detail"].startswith("config.processes:")
