"""Sweep submissions in-process: a bad search space is a 422 naming the field, before
anything is queued; trials are listed by their sweep."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mec_platform.db import session_scope
from mec_platform.tables import Job

BASE = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "train_limit": 64, "max_steps": 2}


def _sweep(space, **config):
    return {"kind": "sweep", "config": {"base": BASE, "space": space} | config}


@pytest.mark.parametrize(("space", "config", "named"), [
    ({"no_such_field": {"choice": [1]}}, {}, "space.no_such_field: not a field"),
    ({"base_lr": {"choice": []}}, {}, "space.base_lr.choice"),
    ({"base_lr": {"uniform": [-1.0, 1.0]}}, {}, "space.base_lr: -1.0"),
    ({"base_lr": {"loguniform": [0.0, 1.0]}}, {}, "space.base_lr: loguniform needs a positive"),
    ({"base_lr": {"choice": [0.1]}}, {"prune": 0}, "config.prune: Input should be a valid "
     "boolean"),  # JSON's types, as the schema says: no coercion
    ({"base_lr": {"choice": [0.1]}}, {"seed": "5"}, "config.seed"),
    ({"base_lr": {"choice": [0.1]}}, {"max_trials": True}, "config.max_trials"),
    ({"base_lr": {"choice": [0.1]}}, {"base": BASE | {"monitor_every": False}},
     "config.base.monitor_every"),
    ({"batch_size": {"int": [0, 64]}}, {}, "space.batch_size: 0"),
    ({"backbone": {"choice": ["convnet", "vgg"]}}, {}, "space.backbone: 'vgg'"),
    ({"base_lr": {"uniform": [0.1, 0.5]}}, {"algorithm": "grid"}, "a grid needs a list"),
    ({"base_lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}, {}, "exactly one of"),
    ({"base_lr": {"choice": [0.1]}}, {"max_parallel": 0}, "max_parallel"),
    ({"base_lr": {"choice": [0.1]}}, {"objective": {"evaluation": {"job_id": 3}}},
     "objective.evaluation.job_id: set by the sweep"),
    ({"base_lr": {"choice": [0.1]}}, {"objective": {"evaluation": {"protocol": "svm"}}},
     "objective.evaluation.protocol"),
    ({"base_lr": {"choice": [0.1]}}, {"objective": {"evaluation": {"data_dir": "/etc"}}},
     "config.objective.evaluation.data_dir: /etc is outside the data roots"),
    ({"base_lr": {"choice": [0.1]}}, {"base": BASE | {"data_dir": "/etc"}},
     "config.base.data_dir: /etc is outside"),
])
def test_a_bad_space_is_422_naming_the_field_and_queues_nothing(client, space, config, named):
    with session_scope() as s:
        before = s.scalar(select(func.count(Job.id)))
    r = client.post("/v1/jobs", json=_sweep(space, **config))
    assert r.status_code == 422 and named in r.json()["detail"], r.text
    with session_scope() as s:
        assert s.scalar(select(func.count(Job.id))) == before


def test_a_sweep_is_queued_on_the_cpu_queue(client):
    r = client.post("/v1/jobs", json=_sweep({"base_lr": {"choice": [0.1, 0.5]},
                                             "eps_sq": {"loguniform": [128, 8]}},
                                            algorithm="tpe", max_trials=4))
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["config"]["space"]["eps_sq"]["loguniform"] == [8, 128]  # either order
    assert sweep["kind"] == "sweep" and sweep["queue"] == "cpu" and sweep["parent_id"] is None
    assert client.get("/v1/jobs", params={"parent_id": sweep["id"]}).json()["count"] == 0
    promote = client.post(f"/v1/jobs/{sweep['id']}/promote")
    assert promote.status_code == 409 and "not a succeeded sweep" in promote.json()["detail"]


def test_an_objectives_direction_is_taken_as_its_mode_and_stored_as_mode(client):
    """One word for it (mode); `direction`, its other name, still works in users' files."""
    space = {"base_lr": {"choice": [0.1]}}
    r = client.post("/v1/jobs", json=_sweep(space, objective={"metric": "loss",
                                                              "direction": "min"}))
    assert r.status_code == 201, r.text
    assert r.json()["config"]["objective"] == {"metric": "loss", "mode": "min",
                                               "evaluation": None}
    both = client.post("/v1/jobs", json=_sweep(space, objective={"mode": "min",
                                                                 "direction": "max"}))
    assert both.status_code == 422
    assert both.json()["detail"].startswith("config.objective.direction: the old name of mode")
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Objective"]
    assert schema["properties"]["direction"]["deprecated"] is True
