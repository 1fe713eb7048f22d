"""GET /v1/jobs/{id}/logs in-process: pages after a cursor, one attempt, the bound per job,
and the follow stream's events. tests/integration follows a real job's lines as they come."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import update

from mec_platform import joblogs
from mec_platform.db import session_scope
from mec_platform.settings import get_settings
from mec_platform.tables import Job

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "train_limit": 64, "max_steps": 2}


def _write(job_id: int, attempt: int, texts: list[str], source: str = "worker") -> None:
    now = datetime.now(UTC)
    with session_scope() as s:
        joblogs.append(s, job_id, attempt, [(now, source, t) for t in texts])


def _job(client) -> int:
    return client.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()["id"]


def test_logs__pages_after_the_cursor_and_by_attempt(client):
    job_id = _job(client)
    _write(job_id, 1, ["one", "two"])
    _write(job_id, 2, ["three"], source="rank 1")
    first = client.get(f"/v1/jobs/{job_id}/logs", params={"limit": 2}).json()
    assert [line["line"] for line in first["lines"]] == ["one", "two"]
    rest = client.get(f"/v1/jobs/{job_id}/logs", params={"since": first["next"]}).json()
    assert [(line["attempt"], line["source"], line["line"]) for line in rest["lines"]] == \
        [(2, "rank 1", "three")]
    again = client.get(f"/v1/jobs/{job_id}/logs", params={"since": rest["next"]}).json()
    assert again["lines"] == [] and again["next"] == rest["next"]
    second = client.get(f"/v1/jobs/{job_id}/logs", params={"attempt": 2}).json()
    assert [line["line"] for line in second["lines"]] == ["three"]
    r = client.get(f"/v1/jobs/{job_id}/logs", params={"since": -1})
    assert r.status_code == 422 and r.json()["detail"].startswith("since:")
    assert client.get("/v1/jobs/999999999/logs").status_code == 404


def test_logs__a_job_keeps_its_newest_lines_each_cut_to_a_bound(client, monkeypatch):
    monkeypatch.setattr(get_settings(), "job_log_lines", 100)
    job_id = _job(client)
    _write(job_id, 1, [f"early {i}" for i in range(80)])
    _write(job_id, 1, [f"late {i}" for i in range(80)] + ["x" * 5000])
    lines = client.get(f"/v1/jobs/{job_id}/logs").json()["lines"]
    assert len(lines) == 100
    assert lines[0]["line"] == "early 61" and lines[-2]["line"] == "late 79"
    assert lines[-1]["line"] == "x" * joblogs.LINE_CHARS


def test_logs__follow_sends_each_line_then_ends_with_the_status(client):
    job_id = _job(client)
    _write(job_id, 1, ["before", "cursor"])
    since = client.get(f"/v1/jobs/{job_id}/logs").json()["lines"][0]["id"]
    _write(job_id, 1, ["last words"])
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="failed"))
    r = client.get(f"/v1/jobs/{job_id}/logs", params={"follow": "true", "since": since})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [dict(field.split(": ", 1) for field in block.splitlines())
              for block in r.text.strip().split("\n\n")]
    assert [e["event"] for e in events] == ["line", "line", "end"]
    assert [json.loads(e["data"])["line"] for e in events[:2]] == ["cursor", "last words"]
    assert events[1]["id"] == str(json.loads(events[1]["data"])["id"])
    assert json.loads(events[2]["data"]) == {"status": "failed"}
