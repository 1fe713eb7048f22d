"""Limits before reading (api.limits): a body over its route's limit is refused by its
Content-Length or while it streams, and a body without a known key is refused before a
byte of it is read; the audit log names the caller of a request refused for its body."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import app
from mec_platform.db import session_scope
from mec_platform.tables import AuditEntry


class Unread:
    """A body that fails the test if the API reads any of it."""

    def __iter__(self):
        raise AssertionError("the API read the body")
        yield b""


def test_a_declared_length_over_the_limit_is_413_unread(client):
    for path, size in (("/v1/jobs", 2**20 + 1), ("/v1/galleries/g/items", 32 * 2**20 + 1),
                       ("/v1/models/1/embed", 10 * 2**20 + 1), ("/v1/models", 2049 * 2**20)):
        r = client.post(path, content=Unread(), headers={"Content-Length": str(size),
                                                         "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"].startswith("body: "), (path, r.text)


def test_no_key_or_an_unknown_one_is_401_before_the_body_is_read(embedded):
    with TestClient(app) as anonymous:
        for headers in ({}, {"Authorization": "Bearer mec_nope"}):
            r = anonymous.post("/v1/jobs", content=Unread(), headers=headers | {
                "Content-Length": "100", "Content-Type": "application/json"})
            assert r.status_code == 401 and "API key" in r.json()["detail"], r.text


def test_a_streamed_body_is_cut_at_the_limit(client):
    """(TestClient hands the app the whole body; tests/security/test_limit_attacks.py measures
    that a real API process stops reading.)"""
    chunks = (b" " * 2**20 for _ in range(4))  # 4 MiB, no Content-Length
    r = client.post("/v1/jobs", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_a_body_refused_after_the_key_is_known_is_audited_with_its_caller(client):
    r = client.post("/v1/jobs", json={"kind": "pretrain", "config": {"batch_size": "x"}})
    assert r.status_code == 422
    with session_scope() as s:
        entry = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
    assert entry.status == 422 and entry.key_prefix and client.key.startswith(entry.key_prefix)
    assert entry.project == "default"


def test_an_idempotency_key_reused_with_another_body_is_409(client):
    spec = {"kind": "pretrain", "config": {"dataset": "synthetic", "backbone": "convnet",
                                           "max_steps": 2}}
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "reuse-1"})
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "reuse-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json=spec | {"name": "other"},
                        headers={"Idempotency-Key": "reuse-1"})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]


def test_job_names_refuse_control_and_bidi_characters(client):
    for name in ("a\x1b[2Jb", "invoice\u202egpj.exe", "a\x00b", "a\u200fb"):
        r = client.post("/v1/jobs", json={"kind": "pretrain", "name": name,
                                          "config": {"dataset": "synthetic"}})
        assert r.status_code == 422 and r.json()["detail"].startswith("name:"), r.text
    assert client.post("/v1/jobs", json={"kind": "pretrain", "name": "résumé 2 ✓",
                                         "config": {"dataset": "synthetic", "max_steps": 2}}
                       ).status_code == 201
