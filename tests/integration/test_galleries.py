"""Galleries on the real API, worker, TorchServe and database (SQLite and PostgreSQL): an
app fills its own gallery with images and vectors, searches it with filters, replaces and
deletes items; a kill -9 of the API or of a worker in the middle of an import loses
nothing that was acknowledged; errors name what is wrong; the app only ever holds its
own API key."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness import png
from PIL import Image

from mec_client import APIError, Client
from serving.client import Keys

NDJSON = "application/x-ndjson"
TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "max_steps": 4, "log_every": 2}



def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def served(platform):
    """A small model, deployed; the app's key (scope embed only)."""
    client = Client(platform.url, platform.key)
    job = client.wait(client.submit({"kind": "pretrain", "config": TINY}).id, timeout=240,
                      poll=0.5)
    model = next(m for m in client.models().data if m.job_id == job.id)
    deploy = client.wait(client.deploy(model.id, workers=1).id, timeout=240, poll=0.5)
    assert deploy.status == "succeeded", deploy.error
    app_key = platform.new_key("shop", "--scope", "embed")
    yield client, model.id, app_key
    client.wait(client.undeploy(model.id).id, timeout=120, poll=0.5)


def test_add_search_filter_upsert_delete(platform, served):
    _, model_id, app_key = served
    app = httpx.Client(base_url=platform.url, timeout=60,
                       headers={"Authorization": f"Bearer {app_key}"})
    made = app.post("/v1/galleries", json={"name": "shop", "model_id": model_id})
    assert made.status_code == 201, made.text
    dim = made.json()["dim"]
    assert made.json()["model_version"] == 1 and made.json()["items"] == 0
    again = app.post("/v1/galleries", json={"name": "shop", "model_id": model_id})
    assert again.status_code == 409 and "name" in again.json()["detail"]

    images = [png(i) for i in range(6)]
    colours = ["red", "green", "blue", "red", "green", "blue"]
    items = [{"id": f"sku-{i}", "image": _b64(png), "metadata": {"colour": colours[i],
                                                                "size": i % 2}}
             for i, png in enumerate(images)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2, dim))
    items += [{"id": f"vec-{i}", "vector": v.tolist(), "metadata": {"colour": "red"}}
              for i, v in enumerate(vectors)]
    added = app.post("/v1/galleries/shop/items", json={"items": items})
    assert added.status_code == 200 and added.json()["added"] == 8, added.text

    # the list for pages: in the order added, a thumbnail of each image item
    listed = app.get("/v1/galleries/shop/items", params={"limit": 7}).json()
    assert listed["count"] == 8 and [i["id"] for i in listed["data"]] == \
        [item["id"] for item in items[:7]]
    thumbnail = base64.b64decode(listed["data"][2]["thumbnail"])  # 32 px: under 96, as it was
    assert np.array_equal(_pixels(thumbnail), _pixels(images[2]))
    named = app.get("/v1/galleries/shop/items", params={"id": ["vec-1", "sku-5"]}).json()
    assert [(i["id"], i["thumbnail"] is None) for i in named["data"]] == \
        [("sku-5", False), ("vec-1", True)] and named["count"] == 2

    # the stored vector of an image is the deployed model's embedding of it
    embedded = app.post(f"/v1/models/{model_id}/embed", json={"images": [_b64(images[2])]})
    stored = app.get("/v1/galleries/shop/items/sku-2").json()
    assert stored["metadata"] == {"colour": "blue", "size": 0}
    assert np.allclose(stored["vector"], embedded.json()["embeddings"][0], atol=1e-6)
    vec = app.get("/v1/galleries/shop/items/vec-1").json()["vector"]
    assert np.allclose(vec, vectors[1] / np.linalg.norm(vectors[1]), atol=1e-6)

    by_image = app.post("/v1/galleries/shop/search", json={"image": _b64(images[3]), "k": 3})
    hits = by_image.json()["results"]
    assert hits[0]["id"] == "sku-3" and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    assert hits[0]["metadata"] == {"colour": "red", "size": 1}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_vector = app.post("/v1/galleries/shop/search",
                         json={"vector": (3 * vectors[0]).tolist(), "k": 1}).json()
    assert by_vector["results"][0]["id"] == "vec-0" and by_vector["model_version"] == 1
    like = app.post("/v1/galleries/shop/search", json={"item_id": "sku-3", "k": 10}).json()
    assert "sku-3" not in [h["id"] for h in like["results"]] and len(like["results"]) == 7
    red = app.post("/v1/galleries/shop/search", json={
        "item_id": "sku-3", "k": 10, "filter": {"colour": "red"}}).json()["results"]
    assert {h["id"] for h in red} == {"sku-0", "vec-0", "vec-1"}
    both = app.post("/v1/galleries/shop/search", json={
        "image": _b64(images[0]), "k": 10,
        "filter": {"colour": {"in": ["green", "blue"]}, "size": 1}}).json()["results"]
    assert {h["id"] for h in both} == {"sku-1", "sku-5"}

    # upsert: the same id replaced (image and metadata); delete by id and by filter
    replaced = app.post("/v1/galleries/shop/items", json={"items": [
        {"id": "sku-0", "image": _b64(images[4]), "metadata": {"colour": "black"}}]})
    assert replaced.json()["added"] == 1
    assert app.get("/v1/galleries/shop/items/sku-0").json()["metadata"] == {"colour": "black"}
    assert app.get("/v1/galleries/shop").json()["items"] == 8
    near = app.post("/v1/galleries/shop/search", json={"image": _b64(images[4]), "k": 2})
    assert {h["id"] for h in near.json()["results"]} == {"sku-0", "sku-4"}
    assert app.delete("/v1/galleries/shop/items/sku-4").status_code == 204
    assert app.get("/v1/galleries/shop/items/sku-4").status_code == 404
    assert app.delete("/v1/galleries/shop/items/sku-4").status_code == 404
    gone = app.post("/v1/galleries/shop/search", json={"image": _b64(images[4]), "k": 10})
    assert "sku-4" not in [h["id"] for h in gone.json()["results"]]
    deleted = app.post("/v1/galleries/shop/delete", json={"filter": {"colour": "red"}})
    assert deleted.json() == {"deleted": 3}
    left = app.post("/v1/galleries/shop/search", json={"item_id": "sku-1", "k": 10}).json()
    assert {h["id"] for h in left["results"]} == {"sku-0", "sku-2", "sku-5"}

    # what is wrong is named, and nothing of a refused add is written
    count = app.get("/v1/galleries/shop").json()["items"]
    wrong_dim = app.post("/v1/galleries/shop/items", json={"items": [
        {"id": "ok", "vector": [1.0] * dim}, {"id": "short", "vector": [1.0, 2.0]}]})
    assert wrong_dim.status_code == 422 and "items[1].vector" in wrong_dim.json()["detail"]
    bad_image = app.post("/v1/galleries/shop/items", json={"items": [
        {"id": "ok", "image": _b64(images[1])}, {"id": "bad", "image": _b64(b"not a png")}]})
    assert bad_image.status_code == 400 and "items[1].image" in bad_image.json()["detail"]
    not_b64 = app.post("/v1/galleries/shop/items", json={"items": [{"id": "x", "image": "%%"}]})
    assert not_b64.status_code == 400 and "items[0].image: not base64" in not_b64.text
    neither = app.post("/v1/galleries/shop/items", json={"items": [{"id": "x"}]})
    assert neither.status_code == 422 and "items.0" in neither.json()["detail"]
    assert app.get("/v1/galleries/shop").json()["items"] == count
    assert app.get("/v1/galleries/shop/items/ok").status_code == 404
    bad_filter = app.post("/v1/galleries/shop/search", json={
        "item_id": "sku-1", "filter": {"colour": {"gt": 1}}})
    assert bad_filter.status_code == 422 and "filter.colour" in bad_filter.json()["detail"]
    query_dim = app.post("/v1/galleries/shop/search", json={"vector": [1.0, 0.0]})
    assert query_dim.status_code == 422 and f"gives {dim}" in query_dim.json()["detail"]
    unknown = app.post("/v1/galleries/nope/search", json={"item_id": "a"})
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    lost = app.post("/v1/galleries/nope/items", content=b'{"id": "a", "vector": [1.0]}\n',
                    headers={"Content-Type": "application/x-ndjson"})
    assert lost.status_code == 404  # and its staged copy is gone
    staging = Path(platform.env["MEC_DATA_DIR"]) / "staging"
    assert not list(staging.glob("*"))
    bad_line = app.post("/v1/galleries/shop/items", headers={"Content-Type": NDJSON},
                        content=b'{"id": "a", "vector": [1.0]}\n{"id": "b"}\n')
    assert bad_line.status_code == 422 and "items.1" in bad_line.json()["detail"]
    assert not list(staging.glob("*"))
    assert app.post("/v1/galleries/shop/search", json={"item_id": "zz"}).status_code == 404
    no_model = app.post("/v1/galleries", json={"name": "x", "model_id": 999_999})
    assert no_model.status_code == 404 and "model_id" in no_model.json()["detail"]
    bad_name = app.post("/v1/galleries", json={"name": "no spaces", "model_id": model_id})
    assert bad_name.status_code == 422 and "name" in bad_name.json()["detail"]

    # keys: none -> 401; without the embed scope -> 403; another project's -> not found
    assert httpx.get(f"{platform.url}/v1/galleries/shop").status_code == 401
    reader = platform.new_key("reader", "--scope", "jobs:read")
    refused = httpx.post(f"{platform.url}/v1/galleries/shop/search", json={"item_id": "sku-1"},
                         headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403 and "embed" in refused.json()["detail"]
    other = platform.new_key("other", "--scope", "embed", "--project", "elsewhere")
    assert httpx.get(f"{platform.url}/v1/galleries/shop",
                     headers={"Authorization": f"Bearer {other}"}).status_code == 404

    # the app never saw TorchServe's keys
    keys = Keys.read(platform.torchserve.home)
    assert keys.inference not in by_image.text and keys.management not in by_image.text
    assert app.delete("/v1/galleries/shop").status_code == 204
    assert app.get("/v1/galleries/shop").status_code == 404


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_an_import_survives_kill_9_of_the_worker_and_the_api(platform, served, tmp_path):
    _, model_id, app_key = served
    app = Client(platform.url, app_key)
    app.galleries.create("photos", model_id)
    n = 1500
    items = [{"id": f"p{i}", "image": png(10_000 + i, side=8), "metadata": {"shard": i % 10}}
             for i in range(n)]
    items[7]["image"] = b"broken"  # skipped and listed; the rest goes in
    job = app.galleries.add("photos", items)
    assert job.kind == "gallery" and job.status == "queued"
    runner = platform.runner_of(job.id, past_step=256)
    os.killpg(platform.workers[runner].pid, signal.SIGKILL)
    platform.workers[runner].wait()
    # what the job acknowledged (its progress) is in the gallery, in whole chunks
    seen = platform.get(f"/v1/jobs/{job.id}")
    done = seen["progress"]["step"]
    assert 0 < done < n and done % 256 == 0
    assert app.galleries.get("photos").items == done - 1
    platform.start_worker(runner)
    finished = app.galleries.wait("photos", job.id, timeout=240)
    assert finished.status == "succeeded" and finished.attempts == 2, finished.error
    assert finished.result["added"] == n - 1 and finished.result["failures"] == 1
    assert finished.result["failed"][0]["id"] == "p7"
    assert "image" in finished.result["failed"][0]["error"]
    assert app.galleries.get("photos").items == n - 1

    # an acknowledged small add, then kill -9 of the API: all of it is there after a restart
    before = app.galleries.search("photos", item_id="p3", k=5, filter={"shard": 3})
    assert all(h.metadata == {"shard": 3} for h in before.results) and len(before.results) == 5
    ack = app.galleries.add("photos", [{"id": "last", "image": png(1, side=8)}])
    assert ack.added == 1
    os.killpg(platform.api.pid, signal.SIGKILL)
    platform.api.wait()
    platform.start_api()
    after = app.galleries.search("photos", item_id="p3", k=5, filter={"shard": 3})
    assert [h.id for h in after.results] == [h.id for h in before.results]
    assert app.galleries.item("photos", "last").metadata is None
    assert app.galleries.get("photos").items == n

    # the CLI: add files, search with a filter, remove by id
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        (folder / f"cat{i}.png").write_bytes(png(500 + i))
    env = platform.env | {"MEC_API_URL": platform.url, "MEC_API_KEY": app_key,
                          "COLUMNS": "160"}

    def mec(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mec_client", "gallery", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout
    assert "added 3 items" in mec("add", "photos", str(folder), "--metadata", '{"kind": "cat"}')
    found = json.loads(mec("search", "photos", str(folder / "cat1.png"), "-k", "2",
                           "--filter", '{"kind": "cat"}', "--json"))
    assert found["results"][0]["id"] == "cat1" and len(found["results"]) == 2
    assert "deleted 2 items" in mec("rm", "photos", "cat0", "cat2")
    assert "photos" in mec("list")
    (folder / "notes.png").write_bytes(b"not a picture")
    refused = subprocess.run([sys.executable, "-m", "mec_client", "gallery", "add", "photos",
                              str(folder / "cat0.png"), str(folder / "notes.png")], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1  # the file is named, not "items[1]"
    assert f"{folder / 'notes.png'}.image: " in refused.stderr, refused.stderr
    try:
        app.galleries.search("photos", item_id="cat0")
    except APIError as exc:
        assert exc.status == 404 and "cat0" in exc.detail
    else:
        raise AssertionError("a deleted item was found")


def test_an_app_cancels_its_own_import_and_keeps_what_was_written(platform, served,
                                                                   tmp_path):
    """`mec gallery add` of a folder says its import job's id before it waits; the app
    cancels that import with `mec gallery cancel`: the chunks written stay."""
    _, model_id, app_key = served
    app = Client(platform.url, app_key)
    app.galleries.create("halted", model_id)
    n = 1500
    for i in range(n):
        (tmp_path / f"h{i}.png").write_bytes(png(20_000 + i, side=8))
    env = platform.env | {"MEC_API_URL": platform.url, "MEC_API_KEY": app_key}
    command = [sys.executable, "-m", "mec_client", "gallery"]
    adding = subprocess.Popen([*command, "add", "halted", str(tmp_path)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    said = adding.stderr.readline()
    assert said.startswith("import job ") and "mec gallery cancel halted" in said, said
    job_id = int(said.split()[2].rstrip(":"))
    platform.runner_of(job_id, past_step=256)
    cancel = subprocess.run([*command, "cancel", "halted", str(job_id)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 0 and f"import job {job_id}: " in cancel.stdout, cancel.stderr
    out, _ = adding.communicate(timeout=120)
    assert adding.returncode == 1 and f"import job {job_id}: cancelled" in out, out
    ended = app.galleries.wait("halted", job_id, timeout=10)
    done = ended.progress.step
    assert 256 <= done < n and done % 256 == 0  # stopped between chunks
    assert app.galleries.get("halted").items == done
    with pytest.raises(APIError, match=f"job {job_id} is already cancelled"):
        app.galleries.cancel("halted", job_id)


@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_a_redeployed_model_leaves_its_galleries_bound_to_the_old_version(platform, served):
    client, model_id, app_key = served
    app = Client(platform.url, app_key)
    app.galleries.create("old-space", model_id)
    app.galleries.add("old-space", [{"id": "a", "image": png(1)}])
    deploy = client.wait(client.deploy(model_id, workers=1, drain_seconds=0).id, timeout=240,
                         poll=0.5)
    assert deploy.status == "succeeded", deploy.error
    for call in (lambda: app.galleries.search("old-space", image=png(1)),
                 lambda: app.galleries.search("old-space", item_id="a"),
                 lambda: app.galleries.add("old-space", [{"id": "b", "image": png(2)}])):
        try:
            call()
        except APIError as exc:
            assert exc.status == 409 and "deployment 1;" in exc.detail and \
                "serves deployment 2" in exc.detail
        else:
            raise AssertionError("a gallery of version 1 answered for version 2")
    fresh = app.galleries.create("new-space", model_id)
    assert fresh.model_version == 2
    app.galleries.add("new-space", [{"id": "a", "image": png(1)}])
    assert app.galleries.search("new-space", image=png(1), k=1).results[0].id == "a"


@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_the_guides_app_path__the_apps_project_trains_and_deploys_its_model(platform):
    """docs/guide.md, Galleries: a key of project "shop" trains and deploys the model, the
    app's key (scope embed, project "shop") fills and searches a gallery of it; a key of
    another project does not see that model."""
    team = Client(platform.url, platform.new_key(
        "shop-team", "--project", "shop", "--scope", "jobs:read", "--scope", "jobs:write",
        "--scope", "models:deploy"))
    job = team.wait(team.submit({"kind": "pretrain", "config": TINY}).id, timeout=240,
                    poll=0.5)
    assert job.status == "succeeded", job.error
    model_id = next(m.id for m in team.models().data if m.job_id == job.id)
    deployed = team.wait(team.deploy(model_id, workers=1).id, timeout=240, poll=0.5)
    assert deployed.status == "succeeded", deployed.error
    try:
        app = Client(platform.url, platform.new_key("shop", "--scope", "embed", "--project",
                                                    "shop"))
        made = app.galleries.create("products", model_id=model_id)
        assert made.model_id == model_id and made.model_version == 1
        vector = [1.0] + [0.0] * (made.dim - 1)
        app.galleries.add("products", [
            {"id": "sku-1", "image": png(1), "metadata": {"colour": "red"}},
            {"id": "sku-2", "vector": vector, "metadata": {"colour": "blue"}}])
        found = app.galleries.search("products", image=png(1), k=5,
                                     filter={"colour": {"in": ["red", "blue"]}})
        assert found.results[0].id == "sku-1"  # its own image is nearest
        assert [r.id for r in app.galleries.search("products", item_id="sku-1").results] \
            == ["sku-2"]
        assert app.galleries.remove("products", filter={"colour": "blue"}) == 1

        other = Client(platform.url, platform.new_key("elsewhere", "--scope", "embed",
                                                      "--project", "elsewhere"))
        try:
            other.galleries.create("products", model_id=model_id)
        except APIError as exc:
            assert exc.status == 404 and exc.detail == f"model_id: model {model_id} not found"
        else:
            raise AssertionError("another project's key saw the model")
    finally:
        team.wait(team.undeploy(model_id).id, timeout=120, poll=0.5)
