"""Gallery rules that keep an app's data: an empty delete filter needs "all": true, and
an admin key lists every project's galleries."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import app
from mec_platform import keys
from mec_platform.db import session_scope
from mec_platform.keys import Scope
from mec_platform.tables import Job, Model


def _served_model(project: str, status: str = "serving", number: int = 1) -> int:
    """A model row recorded as deployed (`status`, deployment `number`) with 4-d embeddings
    (vectors need no TorchServe)."""
    with session_scope() as s:
        job = Job(kind="pretrain", project=project, name="j", queue="gpu", config={},
                  status="succeeded")
        s.add(job)
        s.flush()
        model = Model(job_id=job.id, project=project, name="m", backbone="convnet",
                      dataset="synthetic", artifacts={}, deployment={
                          "status": status, "number": number, "dim": 4, "name": "mec-x"})
        s.add(model)
        s.flush()
        return model.id


def _client(*scopes: Scope, project: str) -> TestClient:
    with session_scope() as s:
        _, plain = keys.create(s, "gallery-rules", list(scopes), project)
    return TestClient(app, headers={"Authorization": f"Bearer {plain}"})


def test_an_empty_delete_filter_is_refused_and_all_true_deletes_every_item(embedded):
    app_key = _client(Scope.EMBED, project="rules")
    assert app_key.post("/v1/galleries", json={"name": "keep", "model_id": _served_model(
        "rules")}).status_code == 201
    items = [{"id": f"v{i}", "vector": [1.0, i, 0, 0]} for i in range(3)]
    assert app_key.post("/v1/galleries/keep/items", json={"items": items}).status_code == 200
    for body in ({"filter": {}}, {"filter": {}, "all": True}, {"all": False}, {}):
        r = app_key.post("/v1/galleries/keep/delete", json=body)
        assert r.status_code == 422, r.text
    assert app_key.get("/v1/galleries/keep").json()["items"] == 3  # nothing lost
    r = app_key.post("/v1/galleries/keep/delete", json={"all": True})
    assert r.json() == {"deleted": 3}


def test_an_admin_key_lists_every_projects_galleries(embedded):
    owner = _client(Scope.EMBED, project="elsewhere")
    assert owner.post("/v1/galleries", json={"name": "theirs", "model_id": _served_model(
        "elsewhere")}).status_code == 201
    admin = _client(Scope.ADMIN, project="ops")
    assert "theirs" in [g["name"] for g in admin.get("/v1/galleries").json()["data"]]
    other = _client(Scope.EMBED, project="nosy")
    assert "theirs" not in [g["name"] for g in other.get("/v1/galleries").json()["data"]]


def test_vectors_float32_cannot_hold_are_refused_and_nothing_is_stored(embedded):
    """Finite as float64, not as float32: stored, they became NaN scores."""
    app_key = _client(Scope.EMBED, project="floats")
    assert app_key.post("/v1/galleries", json={"name": "f", "model_id": _served_model(
        "floats")}).status_code == 201
    for vector, why in (([1e39, 0, 0, 0], "float32's range"), ([1e-46] * 4, "zero once"),
                        ([3e38, 3e38, 3e38, 3e38], None)):
        r = app_key.post("/v1/galleries/f/items", json={"items": [{"id": "a", "vector": vector}]})
        if why is None:  # large but float32: its norm is taken in float64
            assert r.status_code == 200, r.text
            got = app_key.get("/v1/galleries/f/items/a").json()["vector"]
            assert got == [0.5] * 4
        else:
            assert r.status_code == 422 and why in r.json()["detail"], r.text
        search = app_key.post("/v1/galleries/f/search", json={"vector": vector, "k": 1})
        assert search.status_code == (200 if why is None else 422), search.text
    hits = app_key.post("/v1/galleries/f/search", json={"vector": [1, 1, 1, 1]}).json()
    assert hits["results"][0]["score"] is not None and hits["results"][0]["id"] == "a"
