"""The worker's own Prometheus endpoint: what the tasks count, served over HTTP."""

from __future__ import annotations

import time

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from mec_platform import jobs
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind
from mec_platform.queue import Queue
from mec_platform.tables import Job
from worker import prometheus, tasks
from worker.lease import LeaseKeeper


def _until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _count(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tasks_count_jobs_failures_by_reason_and_the_current_job(embedded):
    before = (_count("mec_worker_jobs_total", kind="evaluate", status="failed"),
              _count("mec_worker_job_failures_total", kind="evaluate", reason="JobFailed"))
    with session_scope() as s:
        job_id = jobs.submit(s, JobKind.EVALUATE, {"job_id": 999_999_999}, Queue.CPU).id
    tasks.evaluate_job(job_id)
    assert _count("mec_worker_jobs_total", kind="evaluate", status="failed") == before[0] + 1
    assert _count("mec_worker_job_failures_total", kind="evaluate",
                  reason="JobFailed") == before[1] + 1
    assert _count("mec_worker_current_job") == 0  # idle again


def test_lease_renewals_are_counted_by_result(embedded):
    with session_scope() as s:
        job_id = jobs.submit(s, JobKind.EVALUATE, {}, Queue.CPU).id
        assert jobs.claim(s, job_id, "owner-a", "host", "cpu", 30)
    renewed, lost = (_count("mec_worker_lease_renewals_total", result=r)
                     for r in ("renewed", "lost"))
    with LeaseKeeper(job_id, "owner-a", 30, every=0.05) as keeper:
        _until(lambda: _count("mec_worker_lease_renewals_total", result="renewed")
               >= renewed + 2)
        with session_scope() as s:  # another owner took it: the next renewal is lost
            s.execute(update(Job).where(Job.id == job_id).values(lease_owner="owner-b"))
        _until(lambda: keeper.lost)
    assert _count("mec_worker_lease_renewals_total", result="lost") == lost + 1


def test_serve__an_endpoint_with_the_process_memory_and_the_worker_info():
    port = prometheus.serve(0, "127.0.0.1", "w-test@host", ["cpu", "gpu"], "cpu")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["process_resident_memory_bytes"].value > 10e6
    info = [s for f in text_string_to_metric_families(text) if f.name == "mec_worker_info"
            for s in f.samples]
    assert {"name": "w-test@host", "queues": "cpu,gpu", "device": "cpu"} in \
        [s.labels for s in info]
    assert "# TYPE mec_worker_gpu_utilization_percent gauge" in text  # no samples on a CPU
