"""Scopes, projects and the audit log, in-process (TestClient on the embedded platform).

The scope x route matrix is generated from the app's route table: a new /v1 route that
declares no scope fails `test_every_v1_route_declares_one_scope`, and every declared one is
tried with a key of each scope."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import app
from mec_platform import keys
from mec_platform.db import session_scope
from mec_platform.keys import Scope
from mec_platform.tables import AuditEntry, Job, Model

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "train_limit": 64, "max_steps": 2}
ABSENT = 999_999_999  # an id no row has: the allowed requests change nothing


def _scopes(dependant) -> set[str]:
    found = {getattr(dependant.call, "scope", None)} - {None}
    for sub in dependant.dependencies:
        found |= _scopes(sub)
    return found


def _v1_routes() -> list[tuple[str, str, set[str]]]:
    """(method, path, scopes its dependencies declare) for every route under /v1."""
    return [(method, route.path, _scopes(route.dependant))
            for route in iter_route_contexts(app.routes)
            if route.path.startswith("/v1/") for method in sorted(route.methods)]


def _client(*scopes: Scope, project: str = "default") -> TestClient:
    with session_scope() as s:
        _, plain = keys.create(s, "scopes-test", list(scopes), project)
    client = TestClient(app, headers={"Authorization": f"Bearer {plain}"})
    client.prefix = plain[:12]
    return client


def _model(job_id: int, project: str) -> int:
    """A model row of the job's, in `project`; its id."""
    with session_scope() as s:
        model = Model(job_id=job_id, project=project, name="m", backbone="convnet",
                      dataset="synthetic", artifacts={})
        s.add(model)
        s.flush()
        return model.id


def test_every_v1_route_declares_one_scope():
    routes = _v1_routes()
    assert len(routes) >= 10
    undeclared = [(m, p, s) for m, p, s in routes if len(s) != 1]
    assert not undeclared, f"routes without exactly one scope: {undeclared}"
    table = {(m, p): s.pop() for m, p, s in routes}
    assert table[("GET", "/v1/audit")] == Scope.ADMIN
    assert table[("POST", "/v1/models/{model_id}/deploy")] == Scope.MODELS_DEPLOY
    assert table[("POST", "/v1/jobs/{job_id}/cancel")] == Scope.JOBS_WRITE
    assert table[("POST", "/v1/galleries/{name}/imports/{job_id}/cancel")] == Scope.EMBED


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("method,path,needed", _v1_routes(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_scope_x_route(embedded, scope, method, path, needed):
    """A key with only `scope` gets 403 naming the missing scope exactly where the route
    needs another one (admin passes everywhere)."""
    client = _client(scope)
    url = re.sub(r"\{[a-z_]+\}", str(ABSENT), path)
    r = client.request(method, url)
    if scope == Scope.ADMIN or scope in needed:
        assert r.status_code != 403, (r.status_code, r.text)
        assert r.status_code in (200, 404, 422), (r.status_code, r.text)
    else:
        assert r.status_code == 403, (r.status_code, r.text)
        assert f"lacks the scope '{next(iter(needed))}'" in r.json()["detail"]


def test_an_embed_only_key_reads_and_changes_nothing(embedded):
    owner = _client(project="default")
    job = owner.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    app_key = _client(Scope.EMBED)
    assert app_key.get(f"/v1/jobs/{job['id']}").status_code == 403
    assert app_key.post(f"/v1/jobs/{job['id']}/cancel").status_code == 403
    assert app_key.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).status_code == 403
    assert owner.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    owner.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_deploy_job_is_cancelled_only_with_the_scope_that_starts_one(embedded):
    owner = _client(project="delta")
    trained = owner.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    owner.post(f"/v1/jobs/{trained['id']}/cancel")
    mid = _model(trained["id"], "delta")
    deploy = owner.post(f"/v1/models/{mid}/deploy").json()
    writer = _client(Scope.JOBS_READ, Scope.JOBS_WRITE, project="delta")
    refused = writer.post(f"/v1/jobs/{deploy['id']}/cancel")
    assert refused.status_code == 403
    assert f"lacks the scope 'models:deploy' (job {deploy['id']} is a deploy job" in \
        refused.json()["detail"]
    assert owner.get(f"/v1/jobs/{deploy['id']}").json()["status"] == "queued"
    job = writer.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    assert writer.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    deployer = _client(Scope.JOBS_WRITE, Scope.MODELS_DEPLOY, project="delta")
    assert deployer.post(f"/v1/jobs/{deploy['id']}/cancel").json()["status"] == "cancelled"


def test_other_projects_rows_answer_404_and_admin_sees_all(embedded):
    alpha, beta = _client(project="alpha"), _client(project="beta")
    admin = _client(Scope.ADMIN, project="ops")
    job = alpha.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    jid = job["id"]
    with session_scope() as s:
        assert s.get(Job, jid).project == "alpha"
    mid = _model(jid, "alpha")
    for r in (beta.get(f"/v1/jobs/{jid}"), beta.get(f"/v1/jobs/{jid}/metrics"),
              beta.post(f"/v1/jobs/{jid}/cancel"), beta.get(f"/v1/models/{mid}"),
              beta.post(f"/v1/models/{mid}/deploy")):
        assert r.status_code == 404 and "not found" in r.json()["detail"], r.text
    evaluate = beta.post("/v1/jobs", json={"kind": "evaluate", "config": {"job_id": jid}})
    assert evaluate.status_code == 404 and evaluate.json()["detail"].startswith("config.job_id")
    assert jid not in [j["id"] for j in beta.get("/v1/jobs").json()["data"]]
    assert mid not in [m["id"] for m in beta.get("/v1/models").json()["data"]]
    assert jid in [j["id"] for j in alpha.get("/v1/jobs").json()["data"]]
    assert mid in [m["id"] for m in alpha.get("/v1/models").json()["data"]]
    assert admin.get(f"/v1/jobs/{jid}").status_code == 200
    assert admin.get(f"/v1/models/{mid}").status_code == 200
    assert jid in [j["id"] for j in admin.get("/v1/jobs", params={"limit": 500}).json()["data"]]
    assert admin.post(f"/v1/jobs/{jid}/cancel").json()["status"] == "cancelled"


def test_idempotency_keys_are_per_project(embedded):
    alpha, beta = _client(project="alpha"), _client(project="beta")
    spec = {"kind": "pretrain", "config": TINY}
    a = alpha.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "same-key"})
    b = beta.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "same-key"})
    again = alpha.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "same-key"})
    assert (a.status_code, b.status_code, again.status_code) == (201, 201, 200)
    assert a.json()["id"] != b.json()["id"] and again.json()["id"] == a.json()["id"]
    for client, job in ((alpha, a), (beta, b)):
        client.post(f"/v1/jobs/{job.json()['id']}/cancel")


def test_audit_log_records_who_changed_what_for_admins_only(embedded):
    user = _client(project="gamma")
    admin = _client(Scope.ADMIN, project="ops")
    job = user.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json()
    user.post(f"/v1/jobs/{job['id']}/cancel")
    user.post(f"/v1/jobs/{ABSENT}/cancel")
    TestClient(app).post(f"/v1/jobs/{job['id']}/cancel")  # no key
    user.get("/v1/jobs")  # reads are not audited
    assert user.get("/v1/audit").status_code == 403
    entries = admin.get("/v1/audit", params={"key_prefix": user.prefix}).json()
    assert entries["count"] == 3
    assert [(e["action"], e["status"], e["project"]) for e in reversed(entries["data"])] == [
        ("POST /v1/jobs", 201, "gamma"),
        ("POST /v1/jobs/{job_id}/cancel", 200, "gamma"),
        ("POST /v1/jobs/{job_id}/cancel", 404, "gamma")]
    assert entries["data"][0]["path"] == f"/v1/jobs/{ABSENT}/cancel"
    assert all(e["address"] for e in entries["data"])
    with session_scope() as s:
        anonymous = s.scalars(select(AuditEntry).where(
            AuditEntry.path == f"/v1/jobs/{job['id']}/cancel",
            AuditEntry.key_prefix.is_(None))).all()
    assert [e.status for e in anonymous] == [401]
    by_project = admin.get("/v1/audit", params={"project": "gamma"}).json()
    assert by_project["count"] == 3


def test_keys_get_every_scope_but_admin_by_default_and_check_the_project(embedded):
    with session_scope() as s:
        row, _ = keys.create(s, "plain")
        assert set(row.scopes) == set(Scope) - {Scope.ADMIN} and row.project == "default"
        with pytest.raises(ValueError, match="project name"):
            keys.create(s, "bad", project="Not A Project")
