"""Sweeps, advanced in ticks: each tick reads the sweep's trials (its child pretrain jobs
and their metrics) from the database, cancels the ones successive halving rules out,
submits new ones up to `max_parallel`, and ends the sweep when all have finished. The
database is the sweep's only state: a trial's number is its job's `trial` (unique per
sweep and kind) and its values in its config, so a tick that dies halfway is simply done
again (a trial submitted twice is one job), and no trial is lost or run twice when the
API or a worker is killed.

Samplers: grid is the choices' product in order; random and tpe are Optuna's, asked on
a study rebuilt in memory from the finished trials each time. Pruning is our own
successive halving over the logged metric series: Optuna's pruners keep their rung state
in Optuna's storage, and here the platform's tables are the state."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from sqlalchemy import select, update

from mec_core.config import TrainConfig
from mec_platform import jobs
from mec_platform.db import session_scope
from mec_platform.jobs import FINISHED, JobKind, JobStatus
from mec_platform.queue import Queue
from mec_platform.specs import Distribution, SweepSpec
from mec_platform.tables import Job, Metric

ETA = 3  # successive halving: a third goes on at each rung (a ninth and a third of the steps)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Trial:
    number: int
    job: Job
    params: dict
    series: list[tuple[int, float]]  # the objective's (step, value), by step
    evaluated: bool = False  # the objective is an evaluation of the trial's model ...
    evaluation: Job | None = None  # ... this one, once submitted

    @property
    def value(self) -> float | None:
        """What ranks the trial: its evaluation's top-1 when the objective asks for one,
        else the metric's last value; None until the trial (and evaluation) succeeded."""
        if self.job.status != JobStatus.SUCCEEDED:
            return None
        if self.evaluated:
            done = self.evaluation is not None and self.evaluation.status == JobStatus.SUCCEEDED
            return self.evaluation.result["top1"] if done else None
        return self.series[-1][1] if self.series else None


def tick(job_id: int) -> tuple[JobStatus, dict] | None:
    """Advance sweep `job_id` once; how it ended, or None while it goes on."""
    with session_scope() as s:
        sweep = s.get(Job, job_id)
        spec = SweepSpec(**sweep.config)
        trials = _trials(s, sweep, spec)
        active = [t for t in trials if t.job.status not in FINISHED]
        evaluating = [t.evaluation for t in trials
                      if t.evaluation is not None and t.evaluation.status not in FINISHED]
        if sweep.cancel_requested:
            jobs.cancel_children(s, job_id)
            return JobStatus.CANCELLED, _summary(spec, trials)
        for t in trials:
            if t.evaluated and t.evaluation is None and t.job.status == JobStatus.SUCCEEDED:
                evaluating.append(_evaluate(s, sweep, spec, t))
        busy = list(active)  # what counts against max_parallel: not the trials pruned now
        for t in active if spec.prune else []:
            reason = _ruled_out(t, trials, spec)
            if reason:
                jobs.cancel(s, t.job.id, reason=f"pruned by sweep {job_id}: {reason}")
                busy.remove(t)
        planned = min(spec.max_trials, len(spec.grid())) if spec.algorithm == "grid" \
            else spec.max_trials
        number = len(trials)
        while len(busy) < spec.max_parallel and number < planned:
            busy.append(_submit(s, sweep, spec, number, _suggest(spec, number, trials)))
            active.append(busy[-1])
            number += 1
        summary = _summary(spec, trials)
        s.execute(update(Job).where(Job.id == job_id).values(
            step=summary["finished"], total_steps=planned, result=summary))
    done = number >= planned and not active and not evaluating
    return (JobStatus.SUCCEEDED, summary) if done else None


def _trials(s, sweep: Job, spec: SweepSpec) -> list[Trial]:
    """The sweep's trials (its pretrain children), each with its evaluation (an evaluate
    child with the same number) when the objective asks for one."""
    children = s.scalars(select(Job).where(Job.parent_id == sweep.id).order_by(Job.id)).all()
    evaluations = {c.trial: c for c in children if c.kind == JobKind.EVALUATE}
    found = []
    for child in (c for c in children if c.kind == JobKind.PRETRAIN):
        series = s.execute(select(Metric.step, Metric.value).where(
            Metric.job_id == child.id, Metric.name == spec.objective.metric)
            .order_by(Metric.step)).all()
        found.append(Trial(child.trial, child, {k: child.config.get(k) for k in spec.space},
                           [(step, value) for step, value in series if math.isfinite(value)],
                           spec.objective.evaluation is not None,
                           evaluations.get(child.trial)))
    return sorted(found, key=lambda t: t.number)


def _child(s, sweep: Job, kind: JobKind, number: int) -> Job | None:
    """The sweep's job of this kind for trial `number`, if a tick submitted it."""
    return s.scalar(select(Job).where(Job.parent_id == sweep.id, Job.kind == kind,
                                      Job.trial == number))


def _submit(s, sweep: Job, spec: SweepSpec, number: int, params: dict) -> Trial:
    """Trial `number` as a pretrain job (the same one again if a dead tick submitted it)."""
    child = _child(s, sweep, JobKind.PRETRAIN, number)
    if child is None:
        config = TrainConfig(**spec.base | params).model_dump(mode="json")
        child = jobs.submit(s, JobKind.PRETRAIN, config, Queue.GPU,
                            f"{sweep.name} trial {number}", [*sweep.tags, f"sweep-{sweep.id}"],
                            sweep.priority, project=sweep.project, parent_id=sweep.id,
                            trial=number)
    return Trial(number, child, params, [])


def _evaluate(s, sweep: Job, spec: SweepSpec, trial: Trial) -> Job:
    """The evaluation of trial's model (the same one again if a dead tick submitted it)."""
    trial.evaluation = _child(s, sweep, JobKind.EVALUATE, trial.number) or jobs.submit(
        s, JobKind.EVALUATE, spec.objective.evaluation_of(trial.job.id).model_dump(mode="json"),
        Queue.CPU, f"{sweep.name} trial {trial.number} evaluation",
        [*sweep.tags, f"sweep-{sweep.id}"], sweep.priority, project=sweep.project,
        parent_id=sweep.id, trial=trial.number)
    return trial.evaluation


def _suggest(spec: SweepSpec, number: int, trials: list[Trial]) -> dict:
    if spec.algorithm == "grid":
        return spec.grid()[number]
    sampler = optuna.samplers.TPESampler(seed=spec.seed + number) if spec.algorithm == "tpe" \
        else optuna.samplers.RandomSampler(seed=spec.seed + number)
    study = optuna.create_study(direction="maximize" if spec.objective.rank_mode == "max"
                                else "minimize", sampler=sampler)
    space = {name: _optuna(dist) for name, dist in spec.space.items()}
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=space,
                                                value=t.value)
                      for t in trials if t.value is not None and _inside(t.params, space)])
    return study.ask(space).params


def _optuna(dist: Distribution) -> optuna.distributions.BaseDistribution:
    if dist.choice is not None:
        return optuna.distributions.CategoricalDistribution(dist.choice)
    if dist.int_ is not None:
        return optuna.distributions.IntDistribution(*dist.int_)
    low, high = dist.bounds
    return optuna.distributions.FloatDistribution(low, high, log=dist.loguniform is not None)


def _inside(params: dict, space: dict) -> bool:
    """Whether the trial's values fit today's space (a trial's config is what it ran)."""
    try:
        return all(space[k]._contains(space[k].to_internal_repr(v)) for k, v in params.items())
    except (ValueError, TypeError):
        return False


def _at(series: list[tuple[int, float]], step: float) -> float | None:
    """The objective's value logged last at or before `step`."""
    before = [value for s, value in series if s <= step]
    return before[-1] if before else None


def _ruled_out(trial: Trial, trials: list[Trial], spec: SweepSpec) -> str | None:
    """Successive halving: at each rung (a ninth, a third of the trial's steps) that the
    trial has passed, it goes on only if it is among the best third of the trials that
    reached that rung (once at least ETA have)."""
    total, done = trial.job.total_steps, trial.job.step
    if not total or not trial.series:
        return None
    for rung in (total / ETA**2, total / ETA):
        if done < rung:
            break
        values = [v for t in trials if (v := _at(t.series, rung)) is not None
                  and (t.job.step >= rung or t.job.status == "succeeded")]
        mine = _at(trial.series, rung)
        if mine is None or len(values) < ETA:
            continue
        ranked = sorted(values, reverse=spec.objective.mode == "max")
        cutoff = ranked[math.ceil(len(ranked) / ETA) - 1]
        if (mine < cutoff) if spec.objective.mode == "max" else (mine > cutoff):
            return (f"{spec.objective.metric} {mine:.4g} at step {int(rung)} is not among "
                    f"the best third of the {len(values)} trials that reached it")
    return None


def _summary(spec: SweepSpec, trials: list[Trial]) -> dict:
    rows = [{"number": t.number, "job_id": t.job.id, "status": t.job.status,
             "params": t.params, "value": t.value,
             **({"evaluation_job_id": t.evaluation.id} if t.evaluation else {}),
             **({"reason": reason} if (reason := _why_unscored(t)) else {})} for t in trials]
    scored = [t for t in trials if t.value is not None]
    best = (max if spec.objective.rank_mode == "max" else min)(
        scored, key=lambda t: t.value) if scored else None
    return {"objective": spec.objective.model_dump(), "trials": rows,
            "finished": sum(t.job.status in FINISHED for t in trials),
            "best": None if best is None else {"number": best.number, "job_id": best.job.id,
                                               "value": best.value, "params": best.params}}


def _why_unscored(trial: Trial) -> str | None:
    """Why the trial stopped early (pruned, failed, cancelled) or its evaluation failed."""
    if trial.job.error:
        return trial.job.error
    ev = trial.evaluation
    if ev is not None and ev.status in FINISHED and ev.status != JobStatus.SUCCEEDED:
        return f"evaluation {ev.id} {ev.status}" + (f": {ev.error}" if ev.error else "")
    return None
