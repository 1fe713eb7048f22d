"""Galleries in-process (TestClient on the embedded SQLite platform): create, list, get and
delete; adds by vector (and by image, with the model's embeddings stood in for where
TorchServe cannot run); search with filters; deletes by ids, filter or all; the scope and
project rules; and the error answers, each naming the field. A few calls go to the
service (mec_platform.galleries) directly, as the import task does."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from test_gallery_rules import _served_model

from api.main import app
from mec_platform import errors, galleries, keys
from mec_platform.db import session_scope
from mec_platform.keys import Scope
from mec_platform.tables import Job, Model

_projects = itertools.count()


def _client(project: str, *scopes: Scope) -> TestClient:
    with session_scope() as s:
        _, plain = keys.create(s, "gallery-routes", list(scopes or [Scope.EMBED]), project)
    client = TestClient(app, headers={"Authorization": f"Bearer {plain}"})
    client.key = plain
    return client


@pytest.fixture
def app_key(embedded):
    """A key of a project of its own, with the embed scope, and a served model there."""
    project = f"galleries-{next(_projects)}"
    client = _client(project)
    client.project, client.model_id = project, _served_model(project)
    return client


def _gallery(client: TestClient, name: str = "shop", items: int = 0) -> None:
    r = client.post("/v1/galleries", json={"name": name, "model_id": client.model_id})
    assert r.status_code == 201, r.text
    if items:
        _add(client, name, [{"id": f"i{i}", "vector": [1.0, i, 0, 0],
                             "metadata": {"colour": ["red", "blue"][i % 2], "n": i}}
                            for i in range(items)])


def _add(client: TestClient, name: str, items: list[dict]) -> dict:
    r = client.post(f"/v1/galleries/{name}/items", json={"items": items})
    assert r.status_code == 200, r.text
    return r.json()


def _refused(response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(detail), response.text


def test_create_list_get_and_delete(app_key):
    r = app_key.post("/v1/galleries", json={"name": "shop", "model_id": app_key.model_id})
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["name"], made["model_id"], made["model_version"], made["dim"],
            made["items"]) == ("shop", app_key.model_id, 1, 4, 0)
    _gallery(app_key, "other", items=3)
    listed = app_key.get("/v1/galleries").json()["data"]
    assert [(g["name"], g["items"]) for g in listed] == [("other", 3), ("shop", 0)]
    assert app_key.get("/v1/galleries/other").json()["items"] == 3
    assert app_key.delete("/v1/galleries/other").status_code == 204
    _refused(app_key.get("/v1/galleries/other"), 404, "gallery 'other' not found")
    _refused(app_key.delete("/v1/galleries/other"), 404, "gallery 'other' not found")
    assert [g["name"] for g in app_key.get("/v1/galleries").json()["data"]] == ["shop"]


def test_create__the_errors_name_the_field(app_key):
    _gallery(app_key, "taken")
    cases = [({"name": "taken", "model_id": app_key.model_id}, 409,
              "name: a gallery 'taken' exists"),
             ({"name": "new", "model_id": 999_999_999}, 404,
              "model_id: model 999999999 not found"),
             ({"name": "new", "model_id": _served_model("someone-else")}, 404, "model_id: model"),
             ({"name": "new", "model_id": _served_model(app_key.project, status="undeployed")}, 409,
              "model_id: model"),
             ({"name": "-bad", "model_id": app_key.model_id}, 422, "name:"),
             ({"name": "new"}, 422, "model_id:")]
    for body, status, detail in cases:
        _refused(app_key.post("/v1/galleries", json=body), status, detail)


def test_add_by_vector__normalised_replaced_by_id_and_read_back(app_key):
    _gallery(app_key)
    first = _add(app_key, "shop", [{"id": "a", "vector": [3, 4, 0, 0], "metadata": {"k": 1}},
                                   {"id": "b/c", "vector": [0, 0, 2, 0]}])
    assert first["added"] == 2
    again = _add(app_key, "shop", [{"id": "a", "vector": [0, 1, 0, 0], "metadata": {"k": 2}}])
    assert again == {"added": 1, "seq": first["seq"] + 1}
    assert app_key.get("/v1/galleries/shop/items/a").json() == {
        "id": "a", "metadata": {"k": 2}, "vector": [0.0, 1.0, 0.0, 0.0]}
    assert app_key.get("/v1/galleries/shop/items/b/c").json()["vector"] == [0, 0, 1, 0]
    assert app_key.get("/v1/galleries/shop").json()["items"] == 2
    _refused(app_key.get("/v1/galleries/shop/items/zz"), 404,
             "item_id: no item 'zz' in gallery 'shop'")


def test_add__a_bad_item_is_named_and_nothing_is_written(app_key):
    _gallery(app_key)
    good = {"id": "ok", "vector": [1, 0, 0, 0]}
    cases = [([good, {"id": "short", "vector": [1, 0, 0]}], 422,
              "items[1].vector: 3 values; the gallery's model gives 4"),
             ([{"id": "z", "vector": [0, 0, 0, 0]}], 422, "items[0].vector: zero"),
             ([good, {"id": "pic", "image": "not base64!"}], 400, "items[1].image: not base64"),
             ([{"id": "both", "vector": [1, 0, 0, 0], "image": "aGk="}], 422, "items.0"),
             ([{"vector": [1, 0, 0, 0]}], 422, "items.0.id"),
             ([], 422, "items")]
    for items, status, detail in cases:
        _refused(app_key.post("/v1/galleries/shop/items", json={"items": items}), status,
                 detail)
    assert app_key.get("/v1/galleries/shop").json()["items"] == 0
    _refused(app_key.post("/v1/galleries/nowhere/items", json={"items": [good]}), 404,
             "gallery 'nowhere' not found")


class _Embeddings:
    """The deployed model's embeddings, stood in for: an image's vector is [len, 1, 0, 0]
    of its bytes; b"bad" is an image the model cannot read."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def embed(self, endpoint: str, images: list[bytes]):
        self.asked.append(endpoint)
        bad = {i: "cannot identify image file" for i, d in enumerate(images) if d == b"bad"}
        vectors = [np.array([len(d), 1, 0, 0], np.float32) for i, d in enumerate(images)
                   if i not in bad]
        return np.stack([v / np.linalg.norm(v) for v in vectors]) if vectors else \
            np.empty((0, 4), np.float32), bad


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_add_and_search_by_image_through_the_models_embeddings(app_key, monkeypatch):
    embeddings = _Embeddings()
    monkeypatch.setattr(galleries, "embed_client", lambda: embeddings)
    _gallery(app_key)
    assert _add(app_key, "shop", [{"id": "img", "image": _b64(b"12345")}])["added"] == 1
    assert embeddings.asked == ["mec-x"]  # the deployment's endpoint
    r = app_key.post("/v1/galleries/shop/search", json={"image": _b64(b"12345"), "k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == "img"
    _refused(app_key.post("/v1/galleries/shop/items", json={"items": [
        {"id": "x", "image": _b64(b"bad")}]}), 400, "items[0].image: cannot identify")
    _refused(app_key.post("/v1/galleries/shop/search", json={"image": _b64(b"bad")}), 400,
             "image: cannot identify")
    _refused(app_key.post("/v1/galleries/shop/search", json={"image": "%%"}), 422,
             "image: not base64")


def test_search__by_vector_or_item_with_filters(app_key):
    _gallery(app_key, items=6)  # i0..i5, colour red (even) / blue (odd), n = i

    def ids(body: dict) -> list[str]:
        r = app_key.post("/v1/galleries/shop/search", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == 1
        return [hit["id"] for hit in r.json()["results"]]

    assert ids({"vector": [1, 5, 0, 0], "k": 2}) == ["i5", "i4"]
    assert ids({"vector": [1, 5, 0, 0], "k": 2, "filter": {"colour": "red"}}) == ["i4", "i2"]
    assert ids({"vector": [1, 0, 0, 0], "filter": {"n": {"in": [1, 3]}}}) == ["i1", "i3"]
    assert ids({"vector": [1, 0, 0, 0], "filter": {"colour": "red", "n": 4}}) == ["i4"]
    assert ids({"vector": [1, 0, 0, 0], "filter": {"colour": "green"}}) == []
    assert ids({"item_id": "i3", "k": 2}) == ["i4", "i5"]  # the item itself left out
    hit = app_key.post("/v1/galleries/shop/search", json={"item_id": "i0", "k": 1}).json()
    assert hit["results"][0]["metadata"] == {"colour": "blue", "n": 1}
    assert 0 < hit["results"][0]["score"] <= 1


def test_search__the_errors_name_the_field(app_key):
    _gallery(app_key, items=2)
    cases = [({"vector": [1, 0, 0]}, 422, "vector: 3 values; the gallery's model gives 4"),
             ({"vector": [0, 0, 0, 0]}, 422, "vector: all zeros"),
             ({"item_id": "nope"}, 404, "item_id: no item 'nope' in gallery 'shop'"),
             ({"vector": [1, 0, 0, 0], "item_id": "i0"}, 422, "body: give one of"),
             ({"vector": [1, 0, 0, 0], "k": 0}, 422, "k:"),
             ({"vector": [1, 0, 0, 0], "filter": {"a": {"gt": 1}}}, 422,  # one sentence
              'filter.a: a string, number, boolean or null, or {"in": [such values, ...]}'),
             ({"vector": [1, 0, 0, 0], "filter": {}}, 422, "filter")]
    for body, status, detail in cases:
        _refused(app_key.post("/v1/galleries/shop/search", json=body), status, detail)


def test_delete_by_id_ids_filter_and_all(app_key):
    _gallery(app_key, items=6)
    assert app_key.delete("/v1/galleries/shop/items/i0").status_code == 204
    _refused(app_key.delete("/v1/galleries/shop/items/i0"), 404, "item_id: no item 'i0'")

    def delete(body: dict) -> int:
        r = app_key.post("/v1/galleries/shop/delete", json=body)
        assert r.status_code == 200, r.text
        return r.json()["deleted"]

    assert delete({"ids": ["i1", "i1", "gone"]}) == 1
    assert delete({"filter": {"colour": "red"}}) == 2  # i2, i4
    assert [i["id"] for i in app_key.post("/v1/galleries/shop/search", json={
        "vector": [1, 0, 0, 0]}).json()["results"]] == ["i3", "i5"]
    assert delete({"all": True}) == 2
    assert app_key.get("/v1/galleries/shop").json()["items"] == 0
    _refused(app_key.post("/v1/galleries/shop/delete", json={"ids": ["a"], "all": True}),
             422, "body: give one of")


def test_a_redeployed_model_refuses_adds_and_searches_of_the_old_version(app_key):
    _gallery(app_key, items=1)
    with session_scope() as s:
        s.execute(update(Model).where(Model.id == app_key.model_id).values(deployment={
            "status": "serving", "number": 2, "dim": 4, "name": "mec-x"}))
    said = "gallery 'shop' holds embeddings of model"
    _refused(app_key.post("/v1/galleries/shop/search", json={"vector": [1, 0, 0, 0]}), 409,
             said)
    _refused(app_key.post("/v1/galleries/shop/items", json={"items": [
        {"id": "x", "vector": [1, 0, 0, 0]}]}), 409, said)


def test_an_undeployed_models_gallery_is_searched_by_vector_but_not_by_image(app_key):
    _gallery(app_key, items=2)
    with session_scope() as s:
        s.execute(update(Model).where(Model.id == app_key.model_id).values(deployment={
            "status": "undeployed", "number": 1}))
    r = app_key.post("/v1/galleries/shop/search", json={"vector": [1, 0, 0, 0]})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    _refused(app_key.post("/v1/galleries/shop/search", json={"image": _b64(b"x")}), 409,
             "image: the gallery's model is not deployed")


def test_the_scope_and_project_rules(app_key):
    _gallery(app_key, "mine", items=1)
    reader = _client(app_key.project, Scope.JOBS_READ, Scope.JOBS_WRITE)
    for method, path in (("get", "/v1/galleries"), ("get", "/v1/galleries/mine"),
                         ("post", "/v1/galleries/mine/search")):
        r = getattr(reader, method)(path, **({"json": {"item_id": "i0"}}
                                             if method == "post" else {}))
        _refused(r, 403, f"API key {reader.key[:12]}... lacks the scope 'embed'")
    stranger = _client("strangers")
    assert "mine" not in [g["name"] for g in stranger.get("/v1/galleries").json()["data"]]
    for method, path in (("get", "/v1/galleries/mine"), ("delete", "/v1/galleries/mine"),
                         ("get", "/v1/galleries/mine/items/i0")):
        _refused(getattr(stranger, method)(path), 404, "gallery 'mine' not found")
    # an admin lists every project's galleries, but a name is looked up in its own project
    admin = _client("ops", Scope.ADMIN)
    listed = [(g["name"], g["model_id"]) for g in admin.get("/v1/galleries").json()["data"]]
    assert ("mine", app_key.model_id) in listed
    _refused(admin.get("/v1/galleries/mine"), 404, "gallery 'mine' not found")
    assert app_key.get("/v1/galleries/mine").json()["items"] == 1  # nothing changed


def test_a_large_add_is_an_import_job_followed_with_the_apps_key(app_key):
    _gallery(app_key)
    lines = "".join(json.dumps({"id": f"n{i}", "vector": [1, i, 0, 0]}) + "\n"
                    for i in range(3))
    r = app_key.post("/v1/galleries/shop/items", content=lines,
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "gallery" and job["config"]["count"] == 3
    followed = app_key.get(f"/v1/galleries/shop/imports/{job['id']}")
    assert followed.status_code == 200 and followed.json()["id"] == job["id"]
    _refused(app_key.get(f"/v1/galleries/other/imports/{job['id']}"), 404,
             "gallery 'other' not found")
    _gallery(app_key, "other")
    _refused(app_key.get(f"/v1/galleries/other/imports/{job['id']}"), 404,
             f"job_id: no import {job['id']} into gallery 'other'")
    bad = app_key.post("/v1/galleries/shop/items", content='{"id": "x"}\n',
                       headers={"Content-Type": "application/x-ndjson"})
    _refused(bad, 422, "items.0")


def _import(client: TestClient, name: str = "shop") -> int:
    line = json.dumps({"id": "n", "vector": [1, 0, 0, 0]}) + "\n"
    r = client.post(f"/v1/galleries/{name}/items", content=line,
                    headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_an_import_is_cancelled_with_the_scope_that_starts_one(app_key):
    """The app cancels its own import; /v1/jobs cancels one only with embed too."""
    _gallery(app_key)
    _gallery(app_key, "other")
    job_id = _import(app_key)
    writer = _client(app_key.project, Scope.JOBS_READ, Scope.JOBS_WRITE)
    _refused(writer.post(f"/v1/jobs/{job_id}/cancel"), 403,
             f"API key {writer.key[:12]}... lacks the scope 'embed' (job {job_id} is a "
             "gallery import: cancelling it takes the scope that starts one)")
    _refused(app_key.post(f"/v1/galleries/other/imports/{job_id}/cancel"), 404,
             f"job_id: no import {job_id} into gallery 'other'")
    _refused(_client("strangers").post(f"/v1/galleries/shop/imports/{job_id}/cancel"), 404,
             "gallery 'shop' not found")
    assert app_key.get(f"/v1/galleries/shop/imports/{job_id}").json()["status"] == "queued"
    seen = app_key.get(f"/v1/galleries/shop/imports/{job_id}").json()
    assert "items" not in seen["config"]  # the server's path of its staged items: not shown
    with session_scope() as s:
        staged = Path(s.get(Job, job_id).config["items"])
    assert staged.is_file()
    cancelled = app_key.post(f"/v1/galleries/shop/imports/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert not staged.exists()  # it never runs: its staged items are gone
    _refused(app_key.post(f"/v1/galleries/shop/imports/{job_id}/cancel"), 409,
             f"job {job_id} is already cancelled")
    both = _client(app_key.project, Scope.JOBS_WRITE, Scope.EMBED)
    second = _import(app_key)
    assert both.post(f"/v1/jobs/{second}/cancel").json()["status"] == "cancelled"


def test_the_service_is_called_as_the_routes_and_tasks_call_it(app_key):
    """Refusals are mec_platform.errors, with the HTTP status the API answers."""
    _gallery(app_key, items=3)
    with session_scope() as s:
        key = keys.lookup(s, app_key.key)
        hits, version = galleries.search(s, key, "shop", vector=[1, 2, 0, 0], k=1)
        assert [h["id"] for h in hits] == ["i2"] and version == 1
        assert galleries.delete_items(s, key, "shop", None, {"n": 0}) == 1
        with pytest.raises(errors.NotFound, match="gallery 'gone' not found") as refused:
            galleries.get(s, key, "gone")
        assert refused.value.status == 404


def test_the_openapi_error_texts_are_the_routers_and_name_the_scope(embedded):
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    gallery = paths["/v1/galleries/{name}"]["get"]["responses"]
    job = paths["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "gallery" in gallery["404"]["description"]
    assert gallery["404"]["description"] != job["404"]["description"]
    assert "'embed'" in gallery["403"]["description"]
    assert "'jobs:read'" in job["403"]["description"]
    deploy = paths["/v1/models/{model_id}/deploy"]["post"]["requestBody"]["content"]
    spec = TestClient(app).get("/openapi.json").json()["components"]["schemas"]["DeploySpec"]
    assert deploy and spec["properties"]["gallery_limit"]["deprecated"] is True
    old = paths["/v1/models/{model_id}/gallery/{item_id}/image"]["get"]
    assert old["deprecated"] is True
    assert "/v1/models/{model_id}/references/{item_id}/image" in paths
