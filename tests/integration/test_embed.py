"""POST /v1/models/{id}/embed on the real API, worker and TorchServe: the same vectors as
TorchServe itself, in every body format, with the app's own key only; TorchServe's key is
held and renewed by the platform."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
from harness import png
from PIL import Image

from mec_client import APIError, Client
from serving.client import Keys

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "max_steps": 4, "log_every": 2}



def test_embed_and_search__one_key_one_url(platform, tmp_path):
    client = Client(platform.url, platform.key)
    job = client.wait(client.submit({"kind": "pretrain", "config": TINY}).id, timeout=240,
                      poll=0.5)
    model = next(m for m in client.models().data if m.job_id == job.id)
    app_key = platform.new_key("shop", "--scope", "embed")
    app = httpx.Client(base_url=platform.url, timeout=60,
                       headers={"Authorization": f"Bearer {app_key}"})
    url = f"/v1/models/{model.id}/embed"

    not_yet = app.post(url, content=png(0), headers={"Content-Type": "image/png"})
    assert not_yet.status_code == 409 and "not deployed" in not_yet.json()["detail"]
    deploy = client.wait(client.deploy(model.id, workers=1).id, timeout=240, poll=0.5)
    assert deploy.status == "succeeded", deploy.error

    images = [png(i) for i in range(3)]
    served = Keys.read(platform.torchserve.home).inference
    direct = [httpx.post(f"{platform.torchserve.inference_url}/predictions/mec-{model.id}",
                         content=image, headers={"Authorization": f"Bearer {served}"}
                         ).json()["embeddings"][0] for image in images]
    raw = app.post(url, content=images[0], headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert np.allclose(raw.json()["embeddings"][0], direct[0], atol=1e-6)
    # one version: the deployment's number, as the model's record says it
    assert raw.json()["model_version"] == 1 == client.model(model.id).deployment["number"]
    multipart = app.post(url, files={"image": ("a.png", images[2], "image/png")})
    assert np.allclose(multipart.json()["embeddings"], direct[2:], atol=1e-6)
    # raw float32 when Accept names it first: the same vectors, their shape in X-Mec-Dim
    b64 = {"images": [base64.b64encode(i).decode() for i in images]}
    binary = app.post(url, json=b64, headers={"Accept": "application/octet-stream"})
    assert binary.status_code == 200 and binary.headers["content-type"] == \
        "application/octet-stream"
    assert binary.headers["x-mec-model-version"] == "1"
    vectors = np.frombuffer(binary.content, "<f4").reshape(3, int(binary.headers["x-mec-dim"]))
    assert np.allclose(vectors, direct, atol=1e-6)
    refused = app.post(url, content=b"not an image", headers={
        "Content-Type": "image/png", "Accept": "application/octet-stream"})
    assert refused.status_code == 400 and refused.json()["detail"].startswith("image: ")
    batch = Client(platform.url, app_key).embed(model.id, images)
    assert batch.dim == len(direct[0]) and np.allclose(batch.embeddings, direct, atol=1e-6)
    assert np.allclose(np.linalg.norm(batch.embeddings, axis=1), 1, atol=1e-5)

    bad = app.post(url, content=b"not an image", headers={"Content-Type": "image/png"})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("image: ")
    odd = app.post(url, content=b"x", headers={"Content-Type": "text/plain"})
    assert odd.status_code == 415 and "text/plain" in odd.json()["detail"]
    assert httpx.post(platform.url + url, content=images[0]).status_code == 401
    reader = platform.new_key("reader", "--scope", "jobs:read")
    refused = httpx.post(platform.url + url, content=images[0],
                         headers={"Authorization": f"Bearer {reader}",
                                  "Content-Type": "image/png"})
    assert refused.status_code == 403 and "embed" in refused.json()["detail"]
    try:
        Client(platform.url, reader).embed(model.id, images[:1])
    except APIError as exc:
        assert exc.status == 403
    else:
        raise AssertionError("a key without the embed scope embedded")

    # an operator renews TorchServe's inference key: the held one is refused, the platform
    # renews and retries, and the app sees nothing
    keys = Keys.read(platform.torchserve.home)
    assert httpx.post(f"{platform.torchserve.management_url}/token",
                      params={"type": "inference"},
                      headers={"Authorization": f"Bearer {keys.api}"}).status_code == 200
    assert Keys.read(platform.torchserve.home).inference != keys.inference
    again = app.post(url, content=images[1], headers={"Content-Type": "image/png"})
    assert again.status_code == 200 and np.allclose(again.json()["embeddings"][0], direct[1],
                                                    atol=1e-6)
    assert served not in again.text and keys.inference not in again.text

    # search: the model's kNN gallery, the same neighbours as TorchServe's own endpoint
    served = Keys.read(platform.torchserve.home).inference
    direct_knn = httpx.post(
        f"{platform.torchserve.inference_url}/predictions/mec-{model.id}-knn",
        files={"image": ("a.png", images[0], "image/png")}, data={"k": "5"},
        headers={"Authorization": f"Bearer {served}"}).json()["neighbours"][0]
    raw = app.post(f"/v1/models/{model.id}/search", params={"k": 5, "vote": "true"},
                   content=images[0], headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert [n["id"] for n in raw.json()["neighbours"][0]] == [n["id"] for n in direct_knn]
    assert raw.json()["k"] == 5 and raw.json()["vote"][0] is not None
    found = Client(platform.url, app_key).search(model.id, images[:2], k=3)
    assert [len(n) for n in found.neighbours] == [3, 3]
    assert [n.id for n in found.neighbours[0]] == [n["id"] for n in direct_knn[:3]]
    first = raw.json()["neighbours"][0][0]["id"]
    thumb = app.get(f"/v1/models/{model.id}/gallery/{first}/image")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    missing = app.get(f"/v1/models/{model.id}/gallery/train/99999999/image")
    assert missing.status_code == 404 and "item_id" in missing.json()["detail"]
    too_many = app.post(f"/v1/models/{model.id}/search", params={"k": 1000},
                        content=images[0], headers={"Content-Type": "image/png"})
    assert too_many.status_code == 422 and "k" in too_many.json()["detail"]
    path = tmp_path / "query.png"
    path.write_bytes(images[0])
    env = platform.env | {"MEC_API_URL": platform.url, "MEC_API_KEY": app_key,
                          "COLUMNS": "160"}
    cli = subprocess.run([sys.executable, "-m", "mec_client", "search", str(path), "--model",
                          str(model.id), "-k", "4", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert [n["id"] for n in json.loads(cli.stdout)["neighbours"][0]] == \
        [n["id"] for n in direct_knn[:4]]
    table = subprocess.run([sys.executable, "-m", "mec_client", "search", str(path), "--model",
                            str(model.id)], env=env, capture_output=True, text=True,
                           timeout=120).stdout
    assert "majority label" in table and str(direct_knn[0]["id"]) in table
    client.wait(client.undeploy(model.id).id, timeout=120, poll=0.5)


def test_embed__unknown_model_is_404(platform):
    app = httpx.post(f"{platform.url}/v1/models/999999/embed",
                     content=base64.b64encode(b"x"),
                     headers={"Authorization": f"Bearer {platform.key}",
                              "Content-Type": "image/png"})
    assert app.status_code == 404 and "model 999999" in app.json()["detail"]
