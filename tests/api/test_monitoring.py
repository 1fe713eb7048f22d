"""GET /metrics in-process: the platform's families computed from the database and the
embedded broker, the request families, and who may read it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from api.main import app
from mec_platform import jobs, keys
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.keys import Scope
from mec_platform.queue import Queue
from mec_platform.tables import Job, utcnow

LOCAL = ("127.0.0.1", 50000)


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics__jobs_queue_depth_and_histograms_follow_the_database(embedded):
    local = TestClient(app, client=LOCAL)
    before = scrape(local)
    with session_scope() as s:
        ids = [jobs.submit(s, JobKind.EVALUATE, {}, Queue.CPU).id for _ in range(3)]
        now = utcnow()
        s.execute(update(Job).where(Job.id == ids[0]).values(  # waited 3 s, ran 90 s
            status=JobStatus.SUCCEEDED, enqueued_at=now - timedelta(seconds=93),
            started_at=now - timedelta(seconds=90), finished_at=now))
    after = scrape(local)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    cpu_eval = {"queue": "cpu", "kind": "evaluate"}
    assert delta("mec_jobs", status="queued", **cpu_eval) == 2
    assert delta("mec_jobs", status="succeeded", **cpu_eval) == 1
    assert delta("mec_queue_depth", queue="cpu") == 3  # nothing consumes them here
    assert delta("mec_queue_depth", queue="gpu") == 0
    assert delta("mec_job_duration_seconds_bucket", le="60.0", **cpu_eval) == 0
    assert delta("mec_job_duration_seconds_bucket", le="120.0", **cpu_eval) == 1
    assert delta("mec_job_duration_seconds_count", **cpu_eval) == 1
    assert delta("mec_job_duration_seconds_sum", **cpu_eval) == pytest.approx(90, abs=0.01)
    assert delta("mec_job_wait_seconds_bucket", le="2.0", **cpu_eval) == 0
    assert delta("mec_job_wait_seconds_bucket", le="5.0", **cpu_eval) == 1
    for queue in ("gpu", "cpu"):  # no worker runs in-process
        assert ("mec_workers", (("queue", queue),)) in after


def test_metrics__requests_by_route_template_and_status(embedded, client):
    local = TestClient(app, client=LOCAL)
    labels = {"handler": "/v1/jobs/{job_id}", "method": "GET", "status": "4xx"}
    before = value(scrape(local), "http_requests_total", **labels)
    for job_id in (999_999_001, 999_999_002):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    after = scrape(local)
    assert value(after, "http_requests_total", **labels) - before == 2
    assert value(after, "http_request_duration_seconds_count", handler="/v1/jobs/{job_id}",
                 method="GET") >= 2
    assert not any(name == "http_requests_total" and ("handler", "/metrics") in labels
                   for name, labels in after)  # scrapes are not counted


def test_metrics__other_addresses_need_an_admin_key(embedded, monkeypatch):
    remote = TestClient(app, client=("198.51.100.7", 40000))
    assert remote.get("/metrics").status_code == 401
    with session_scope() as s:
        _, reader = keys.create(s, "reader", [Scope.JOBS_READ])
        _, admin = keys.create(s, "ops", [Scope.ADMIN])
    refused = remote.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    assert "MEC_METRICS_NETWORKS" in refused.json()["detail"]
    assert remote.get("/metrics", headers={"Authorization": f"Bearer {admin}"}
                      ).status_code == 200
    monkeypatch.setattr(embedded, "metrics_networks", ["198.51.100.0/24"])
    assert remote.get("/metrics").status_code == 200
    assert TestClient(app, client=LOCAL).get("/metrics").status_code == 401


def test_settings__metrics_networks_must_be_networks(monkeypatch):
    from pydantic import ValidationError

    from mec_platform.settings import Settings

    monkeypatch.setenv("MEC_METRICS_NETWORKS", '["10.0.0.0/8", "not-a-net"]')
    with pytest.raises(ValidationError, match="not-a-net"):
        Settings()
