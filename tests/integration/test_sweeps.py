"""Sweeps through the real API and Celery workers: a grid sweep finishes with its best
trial named and promoted to a deployment; a sweep goes on, losing no trial and running
none twice, after kill -9 of the worker running its trial and of the API; cancelling a
sweep stops every trial."""

from __future__ import annotations

import os
import signal

import pytest

from mec_client import Client

BASE = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "log_every": 2, "checkpoint_every": 4, "warmup_epochs": 0.2,
        "lambda_warmup_epochs": 0.2}


def _sweep(platform, space, steps, precision="fp32", **config):
    base = BASE | {"max_steps": steps, "epochs": steps // 8 + 1, "precision": precision}
    return platform.post("/v1/jobs", {"kind": "sweep", "name": "it-sweep", "config": {
        "base": base, "space": space,
        "objective": {"metric": "lr", "mode": "max"}} | config})


def _trials(platform, sweep_id):
    return platform.get("/v1/jobs", params={"parent_id": sweep_id})["data"][::-1]


@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_a_grid_sweep_names_and_promotes_its_best_trial(platform):
    sweep = _sweep(platform, {"base_lr": {"choice": [0.05, 0.3]}}, 4, algorithm="grid",
                   max_parallel=2, prune=False, precision="bf16")  # the others' trials: fp32
    done = platform.wait_status(sweep["id"], ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done["error"]
    trials = _trials(platform, sweep["id"])
    assert [t["config"]["base_lr"] for t in trials] == [0.05, 0.3]
    assert {t["config"]["precision"] for t in trials} == {"bf16"}
    assert all(t["status"] == "succeeded" and t["parent_id"] == sweep["id"] for t in trials)
    best = done["result"]["best"]
    assert best["job_id"] == trials[1]["id"] and best["params"] == {"base_lr": 0.3}
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 2
    client = Client(platform.url, platform.key)
    assert [t.id for t in client.jobs(parent_id=sweep["id"]).data] == \
        [t["id"] for t in trials][::-1]
    deploy = client.promote(sweep["id"])
    deployed = platform.wait_status(deploy.id, ("succeeded", "failed"))
    assert deployed["status"] == "succeeded", deployed["error"]
    model = next(m for m in platform.get("/v1/models")["data"] if m["job_id"] == best["job_id"])
    assert model["deployment"]["status"] == "serving"
    platform.post(f"/v1/models/{model['id']}/undeploy", expect=202)


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_a_sweep_survives_kill_9_of_its_trials_worker_and_of_the_api(platform):
    sweep = _sweep(platform, {"eps_sq": {"loguniform": [8, 128]}}, 40, algorithm="random",
                   max_trials=3, max_parallel=1, prune=False)
    first = platform.wait_for(lambda: _trials(platform, sweep["id"]), 120, "the first trial")
    runner = platform.runner_of(first[0]["id"], past_step=6)
    os.killpg(platform.workers[runner].pid, signal.SIGKILL)
    platform.workers[runner].wait()
    os.killpg(platform.api.pid, signal.SIGKILL)
    platform.api.wait()
    platform.start_api()
    platform.start_worker(runner)
    done = platform.wait_status(sweep["id"], ("succeeded", "failed", "cancelled"), timeout=400)
    assert done["status"] == "succeeded", done["error"]
    trials = _trials(platform, sweep["id"])
    assert len(trials) == 3 and all(t["status"] == "succeeded" for t in trials)
    assert trials[0]["attempts"] == 2  # resumed, not run again as a new trial
    assert len({t["config"]["eps_sq"] for t in trials}) == 3
    assert sorted(r["number"] for r in done["result"]["trials"]) == [0, 1, 2]


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_cancelling_a_sweep_stops_every_trial(platform):
    sweep = _sweep(platform, {"base_lr": {"choice": [0.1, 0.2, 0.3]}}, 400, algorithm="grid",
                   max_parallel=2, prune=False)
    trials = platform.wait_for(lambda: len(t := _trials(platform, sweep["id"])) == 2 and t, 120,
                               "two trials")
    platform.runner_of(trials[0]["id"], past_step=2)
    platform.post(f"/v1/jobs/{sweep['id']}/cancel", expect=200)
    platform.wait_for(lambda: all(t["status"] == "cancelled"
                                  for t in _trials(platform, sweep["id"])), 30,
                      "every trial cancelled")
    assert platform.wait_status(sweep["id"], ("cancelled",), timeout=30)["status"] == "cancelled"
    assert len(_trials(platform, sweep["id"])) == 2  # no new trial after the cancel
