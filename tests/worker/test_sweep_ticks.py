"""Sweep ticks called directly, on the embedded database: trials are pretrain jobs (run
here by the pretrain task itself, or given made-up progress), at most max_parallel at once;
a repeated tick submits nothing twice; successive halving stops a trial that falls out of
the best third; the sweep ends with its best trial named."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, update

from mec_platform import jobs
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind
from mec_platform.queue import Queue
from mec_platform.specs import SweepSpec
from mec_platform.tables import Job, Metric
from worker import sweeps, tasks

BASE = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "pred_hidden_dim": 16, "train_limit": 64, "max_steps": 3, "monitor_every": 0,
        "log_every": 1}


def _sweep(space: dict, **config) -> int:
    spec = {"base": BASE, "space": space, "objective": {"metric": "lr", "mode": "max"}}
    with session_scope() as s:
        return jobs.submit(s, JobKind.SWEEP, spec | config, Queue.CPU, "s").id


def _job(job_id: int) -> Job:
    with session_scope() as s:
        return s.get(Job, job_id)


def _trials(sweep_id: int) -> list[Job]:
    with session_scope() as s:
        return s.scalars(select(Job).where(Job.parent_id == sweep_id).order_by(Job.id)).all()


def test_a_grid_sweep_runs_every_combination_and_names_the_best(embedded):
    sweep_id = _sweep({"base_lr": {"choice": [0.1, 0.3]}, "seed": {"choice": [0, 1]}},
                      algorithm="grid", max_parallel=2, prune=False)
    tasks.advance_sweep(sweep_id)
    tasks.advance_sweep(sweep_id)  # again at once: nothing more while two are queued
    queued = _trials(sweep_id)
    assert len(queued) == 2 and _job(sweep_id).status == "running"
    while (waiting := [t for t in _trials(sweep_id) if t.status == "queued"]):
        for trial in waiting:
            tasks.pretrain(trial.id)  # a finished trial ticks its sweep
    trials = _trials(sweep_id)
    assert [(t.config["base_lr"], t.config["seed"]) for t in trials] == \
        [(0.1, 0), (0.1, 1), (0.3, 0), (0.3, 1)]
    assert all(t.status == "succeeded" and t.parent_id == sweep_id for t in trials)
    sweep = _job(sweep_id)
    assert sweep.status == "succeeded" and sweep.lease_owner is None
    assert sweep.result["best"]["params"]["base_lr"] == 0.3
    assert sweep.result["best"]["job_id"] in {t.id for t in trials[2:]}
    assert len(sweep.result["trials"]) == 4 and sweep.result["finished"] == 4


@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_random_and_tpe_draw_inside_the_space(embedded, algorithm):
    sweep_id = _sweep({"eps_sq": {"loguniform": [8, 128]}, "batch_size": {"int": [16, 48]}},
                      algorithm=algorithm, max_trials=3, max_parallel=3)
    tasks.advance_sweep(sweep_id)
    trials = _trials(sweep_id)
    assert len(trials) == 3
    drawn = [(t.config["eps_sq"], t.config["batch_size"]) for t in trials]
    assert all(8 <= e <= 128 and 16 <= b <= 48 for e, b in drawn)
    assert len(set(drawn)) == 3


def _progress(job_id: int, step: int, total: int, lr: dict[int, float], status="running"):
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status=status, step=step, total_steps=total))
        s.execute(insert(Metric), [{"job_id": job_id, "step": k, "epoch": 0, "name": "lr",
                                    "value": v} for k, v in lr.items()])


def test_successive_halving_stops_a_trial_out_of_the_best_third(embedded):
    sweep_id = _sweep({"base_lr": {"choice": [0.3, 0.2, 0.1, 0.05]}}, algorithm="grid",
                      max_parallel=4)
    tasks.advance_sweep(sweep_id)
    first, second, third, fourth = (t.id for t in _trials(sweep_id))
    for job_id, lr in ((first, 0.3), (second, 0.2), (third, 0.1)):
        _progress(job_id, 90, 90, {10: lr, 50: lr, 90: lr}, status="succeeded")
    _progress(fourth, 12, 90, {10: 0.05})  # past the first rung (90 / 9)
    tasks.advance_sweep(sweep_id)
    pruned = _job(fourth)
    assert pruned.cancel_requested and pruned.status == "running"  # stops within seconds
    assert _job(sweep_id).status == "running"  # the sweep ends once its last trial has
    assert pruned.error.startswith(f"pruned by sweep {sweep_id}: lr 0.05 at step 10")
    assert "best third of the 4 trials" in pruned.error
    with session_scope() as s:  # the trial's worker ends it as cancelled, keeping the reason
        s.execute(update(Job).where(Job.id == fourth).values(lease_owner="w"))
        jobs.finish(s, fourth, "w", jobs.JobStatus.CANCELLED)
    assert _job(fourth).status == "cancelled" and _job(fourth).error.startswith("pruned")
    tasks.advance_sweep(sweep_id)
    sweep = _job(sweep_id)
    assert sweep.status == "succeeded" and sweep.result["best"]["params"] == {"base_lr": 0.3}
    assert sweep.result["trials"][3]["reason"].startswith("pruned")


def test_the_rule_waits_for_three_trials_at_a_rung(embedded):
    sweep_id = _sweep({"base_lr": {"choice": [0.3, 0.01]}}, algorithm="grid", max_parallel=2)
    tasks.advance_sweep(sweep_id)
    good, bad = (t.id for t in _trials(sweep_id))
    _progress(good, 90, 90, {10: 0.3, 90: 0.3}, status="succeeded")
    _progress(bad, 40, 90, {10: 0.01, 30: 0.01})
    tasks.advance_sweep(sweep_id)  # two trials at each rung: too few to rank
    assert not _job(bad).cancel_requested


def test_a_cancelled_sweep_cancels_its_trials(embedded):
    sweep_id = _sweep({"base_lr": {"choice": [0.1, 0.2, 0.3]}}, algorithm="grid",
                      max_parallel=2)
    tasks.advance_sweep(sweep_id)
    with session_scope() as s:
        jobs.cancel(s, sweep_id)
    tasks.advance_sweep(sweep_id)
    assert _job(sweep_id).status == "cancelled"
    trials = _trials(sweep_id)
    assert len(trials) == 2 and all(t.status == "cancelled" for t in trials)
    assert trials[0].error == f"sweep {sweep_id} was cancelled"


def test_a_trial_submitted_by_a_tick_that_died_is_not_submitted_again(embedded):
    sweep_id = _sweep({"base_lr": {"choice": [0.1, 0.2]}}, algorithm="grid", max_parallel=1)
    with session_scope() as s:
        sweep = s.get(Job, sweep_id)
        made = sweeps._submit(s, sweep, SweepSpec(**sweep.config), 0, {"base_lr": 0.1})
        # ... and the tick died here
    tasks.advance_sweep(sweep_id)  # the next tick finds trial 0 and waits for it
    trials = _trials(sweep_id)
    assert [t.id for t in trials] == [made.job.id]


def test_an_evaluation_objective_ranks_trials_by_their_models_evaluation(embedded):
    evaluation = {"protocol": "knn", "train_limit": 64, "test_limit": 32, "k": 5}
    sweep_id = _sweep({"base_lr": {"choice": [0.1, 0.3]}}, algorithm="grid", max_parallel=2,
                      prune=False, objective={"metric": "loss", "mode": "min",
                                              "evaluation": evaluation})
    tasks.advance_sweep(sweep_id)
    for trial in _trials(sweep_id):
        tasks.pretrain(trial.id)  # each end ticks the sweep: its evaluation is submitted
    children = _trials(sweep_id)
    pretrains = [j for j in children if j.kind == "pretrain"]
    evaluations = [j for j in children if j.kind == "evaluate"]
    assert [e.config["job_id"] for e in evaluations] == [t.id for t in pretrains]
    assert all(e.config["k"] == 5 and e.queue == "cpu" for e in evaluations)
    assert _job(sweep_id).status == "running"  # not done before its evaluations are
    tasks.advance_sweep(sweep_id)  # a repeated tick submits no second evaluation
    assert len(_trials(sweep_id)) == 4
    for e in evaluations:
        tasks.evaluate_job(e.id)
    sweep = _job(sweep_id)
    assert sweep.status == "succeeded", sweep.error
    top1 = {e.config["job_id"]: _job(e.id).result["top1"] for e in evaluations}
    rows = sweep.result["trials"]
    assert [r["value"] for r in rows] == [top1[t.id] for t in pretrains]
    assert [r["evaluation_job_id"] for r in rows] == [e.id for e in evaluations]
    best = max(pretrains, key=lambda t: (top1[t.id], -t.id))
    assert sweep.result["best"]["job_id"] == best.id
    assert sweep.result["best"]["value"] == top1[best.id]


def test_a_stored_sweep_whose_objective_says_direction_ranks_by_it(embedded):
    """A sweep stored with the objective's other name (`direction`) still runs."""
    sweep_id = _sweep({"base_lr": {"choice": [0.3, 0.1]}}, algorithm="grid", max_parallel=2,
                      prune=False, objective={"metric": "lr", "direction": "min"})
    tasks.advance_sweep(sweep_id)
    for trial in _trials(sweep_id):
        _progress(trial.id, 3, 3, {3: trial.config["base_lr"]}, status="succeeded")
    tasks.advance_sweep(sweep_id)
    sweep = _job(sweep_id)
    assert sweep.status == "succeeded" and sweep.result["best"]["params"] == {"base_lr": 0.1}
    assert [t.trial for t in _trials(sweep_id)] == [0, 1]  # numbers in their column
