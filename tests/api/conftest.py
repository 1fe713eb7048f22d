"""The in-process API with a fresh key of every scope but admin."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import app
from mec_platform import keys
from mec_platform.db import session_scope
from mec_platform.tables import Model


@pytest.fixture
def client(embedded):
    with session_scope() as s:
        _, plain = keys.create(s, "routes")
    with TestClient(app, headers={"Authorization": f"Bearer {plain}"}) as c:
        c.key = plain
        yield c


@pytest.fixture
def synthetic_model(client):
    """(job id, model id): a queued pretraining job on synthetic images, in the client's
    project, and a model row of it (no files: enough for the routes that queue a job)."""
    job = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "max_steps": 2}})
    assert job.status_code == 201, job.text
    with session_scope() as s:
        model = Model(job_id=job.json()["id"], project="default", name="m",
                      backbone="convnet", dataset="synthetic", artifacts={})
        s.add(model)
        s.flush()
        return job.json()["id"], model.id
