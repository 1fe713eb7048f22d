"""The job lifecycle in the database (claim, lease, reap, cancel), on SQLite and PostgreSQL."""

from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from mec_platform import jobs
from mec_platform.db import make_engine
from mec_platform.migrate import upgrade
from mec_platform.tables import Job, Lease, utcnow

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgres"])
def session(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mec.db'}"
    else:
        name = f"mec_lifecycle_{tmp_path.name[-8:].replace('-', '_')}".lower()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()
    if request.param == "postgres":
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_job(session, **kw) -> Job:
    job = Job(**{"kind": "pretrain", "project": "default", "name": "t", "queue": "gpu",
                 "config": {}, "status": "queued", **kw})
    session.add(job)
    session.commit()
    return job


def test_claim__only_one_of_two_deliveries_runs(session):
    job = new_job(session)
    assert jobs.claim(session, job.id, "a", "host", "cpu", 60)
    assert not jobs.claim(session, job.id, "b", "host", "cpu", 60)
    session.refresh(job)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "a", 1)


def test_renew_and_finish__only_by_the_lease_owner(session):
    job = new_job(session)
    jobs.claim(session, job.id, "a", "host", "cpu", 60)
    assert jobs.renew(session, job.id, "a", 60)
    assert not jobs.renew(session, job.id, "b", 60)
    assert not jobs.finish(session, job.id, "b", "succeeded")
    assert jobs.finish(session, job.id, "a", "succeeded", result={"steps": 3})
    session.refresh(job)
    assert job.status == "succeeded" and job.finished_at and job.result == {"steps": 3}
    (lease,) = _leases(session, job.id)  # claimed, renewed, ended by its owner's finish
    assert lease.owner == "a" and lease.claimed_at <= lease.ended_at <= lease.expires


def test_reap__requeues_expired_leases_and_gives_up_after_max_attempts(session):
    job = new_job(session)
    for attempt in (1, 2, 3):
        assert jobs.claim(session, job.id, f"w{attempt}", "host", "cpu", 60)
        assert jobs.reap(session, max_attempts=3) == []  # lease still valid
        job.lease_expires = utcnow() - timedelta(seconds=1)  # the worker died
        session.commit()
        requeued = jobs.reap(session, max_attempts=3)
        session.refresh(job)
        if attempt < 3:
            assert requeued == [job.id] and job.status == "queued"
    assert requeued == [] and job.status == "failed"
    assert "gave up after 3 attempts" in job.error and "w3" in job.error
    assert not jobs.claim(session, job.id, "w4", "host", "cpu", 60)
    history = _leases(session, job.id)  # each attempt ended when its lease ran out
    assert [lease.owner for lease in history] == ["w1", "w2", "w3"]
    assert all(lease.ended_at < lease.claimed_at + timedelta(seconds=1) for lease in history)
    assert all(a.ended_at <= b.claimed_at for a, b in zip(history, history[1:]))


def test_reap__a_cancelled_job_whose_worker_died_ends_cancelled_keeping_its_reason(session):
    pruned, asked = new_job(session), new_job(session)
    for job in (pruned, asked):
        jobs.claim(session, job.id, "w1", "host", "cpu", 60)
    jobs.cancel(session, pruned.id, reason="pruned by sweep 7 at step 40")
    jobs.cancel(session, asked.id)
    for job in (pruned, asked):
        job.lease_expires = utcnow() - timedelta(seconds=1)  # its worker died before stopping
    session.commit()
    assert jobs.reap(session, max_attempts=3) == []
    for job in (pruned, asked):
        session.refresh(job)
    assert (pruned.status, pruned.error) == ("cancelled", "pruned by sweep 7 at step 40")
    assert (asked.status, asked.error) == (
        "cancelled", "cancelled; worker w1 on host stopped renewing its lease before it stopped")


def test_a_job_that_ended_without_its_staged_file_removes_it(session, tmp_path):
    """An import's staged items, an uploaded checkpoint: gone once the job has ended
    (cancelled while queued, or by the reaper), kept while it may still run, and kept by
    a model import that succeeded (the model's checkpoint)."""
    staged = {}
    for name, kind, field in (("queued", "gallery", "items"), ("reaped", "import", "checkpoint"),
                              ("requeued", "gallery", "items"), ("kept", "import", "checkpoint")):
        staged[name] = tmp_path / f"{name}.bin"
        staged[name].write_bytes(b"x")
        staged[name] = (new_job(session, kind=kind, config={field: str(staged[name])}),
                        staged[name])
    jobs.cancel_job(session, staged["queued"][0])
    for name in ("reaped", "requeued"):
        job = staged[name][0]
        jobs.claim(session, job.id, "w1", "host", "cpu", 60)
        job.lease_expires = utcnow() - timedelta(seconds=1)
    jobs.cancel(session, staged["reaped"][0].id)
    session.commit()
    assert jobs.reap(session, max_attempts=3) == [staged["requeued"][0].id]
    job = staged["kept"][0]
    jobs.claim(session, job.id, "w1", "host", "cpu", 60)
    jobs.finish(session, job.id, "w1", "succeeded")
    session.refresh(job)
    jobs.drop_staged(job)
    assert {name: path.exists() for name, (_, path) in staged.items()} == {
        "queued": False, "reaped": False, "requeued": True, "kept": True}


def _leases(session, job_id: int) -> list[Lease]:
    return list(session.scalars(select(Lease).where(Lease.job_id == job_id)
                                .order_by(Lease.id)))


def test_cancel__queued_at_once_running_by_flag_finished_refused(session):
    queued, running, done = new_job(session), new_job(session), new_job(session)
    jobs.claim(session, running.id, "a", "host", "cpu", 60)
    jobs.claim(session, done.id, "a", "host", "cpu", 60)
    jobs.finish(session, done.id, "a", "succeeded")
    assert jobs.cancel(session, queued.id) == "queued"
    assert jobs.cancel(session, running.id) == "running"
    assert jobs.cancel(session, done.id) is None
    for job in (queued, running):
        session.refresh(job)
    assert queued.status == "cancelled" and not jobs.claim(session, queued.id, "b", "h", "c", 9)
    assert running.status == "running" and running.cancel_requested
