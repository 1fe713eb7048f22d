"""Deploy a trained model through the control plane into a real TorchServe, re-deploy it
under load without dropping a request, and undeploy it."""

import io
import os
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_jobs import pretrain

from mec_core.data import synthetic
from serving.client import Keys


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic("test", n=i + 1).images[i].permute(1, 2, 0).numpy()).save(
        buf, format="PNG")
    return buf.getvalue()


def deploy(platform, model_id: int, action: str = "deploy", **spec) -> dict:
    job = platform.post(f"/v1/models/{model_id}/{action}", spec or None, expect=202)
    assert job["kind"] == "deploy"
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=240)
    assert done["status"] == "succeeded", done["error"]
    return platform.get(f"/v1/models/{model_id}")


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_deploy_redeploy_and_undeploy(platform):
    job = pretrain(platform, 4)
    assert platform.wait_status(job["id"], ("succeeded", "failed"))["status"] == "succeeded"
    model = next(m for m in platform.get("/v1/models")["data"] if m["job_id"] == job["id"])
    assert model["deployment"] is None

    served = deploy(platform, model["id"], batch_size=4, max_batch_delay_ms=10,
                    gallery_limit=200)["deployment"]
    assert served["status"] == "serving" and served["number"] == 1
    assert "version" not in served  # TorchServe's "1.0" stays inside
    auth = {"Authorization": f"Bearer {Keys.read(platform.torchserve.home).inference}"}
    r = httpx.post(served["urls"]["embed"], content=png(0), headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["dim"] == 1024  # 256 channels on a 2x2 grid
    assert r.json()["model_version"] == 1  # the deployment's number, not the handler's
    r = httpx.post(served["urls"]["knn"], files={"image": png(1)}, data={"k": "3"},
                   headers=auth, timeout=30)
    assert r.status_code == 200 and len(r.json()["neighbours"][0]) == 3

    assert "reference_reused_from" not in served  # no evaluation kept features yet
    # an evaluation keeps its train features; the next deploy's reference set, the same
    # 200 images, reuses them instead of embedding them again
    evaluation = platform.post("/v1/jobs", {"kind": "evaluate", "config": {
        "job_id": job["id"], "train_limit": 200, "test_limit": 50}})
    finished = platform.wait_status(evaluation["id"], ("succeeded", "failed"))
    assert finished["status"] == "succeeded", finished["error"]

    codes, stop = [], threading.Event()

    def keep_asking():
        with httpx.Client(headers=auth, timeout=30) as client:
            while not stop.is_set():
                codes.append(client.post(served["urls"]["embed"], content=png(2)).status_code)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        again = deploy(platform, model["id"], gallery_limit=200)["deployment"]
    finally:
        stop.set()
        asker.join()
    assert again["number"] == 2 and again["urls"] == served["urls"]
    assert again["reference_reused_from"] == evaluation["id"]
    assert codes and set(codes) == {200}, codes  # the old version served until the new one
    versions = platform.torchserve.client().describe(served["name"])
    assert [v["modelVersion"] for v in versions] == ["2.0"]
    # the gallery's pixels (search results' images) are kept for the serving version only
    assert np.load(again["gallery_images"]).shape[0] == 200
    assert not Path(served["gallery_images"]).exists()
    # and the archives of the serving version only
    name, store = served["name"], platform.root / "model-store"
    assert sorted(p.name for p in store.glob(f"{name}-*.mar")) == [
        f"{name}-knn-v2.mar", f"{name}-v2.mar"]

    gone = deploy(platform, model["id"], "undeploy")["deployment"]
    assert gone["status"] == "undeployed" and not Path(again["gallery_images"]).exists()
    assert not list(store.glob(f"{name}-*.mar"))
    r = httpx.post(served["urls"]["embed"], content=png(0), headers=auth, timeout=30)
    assert r.status_code == 404


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_two_deploys_of_a_model_at_once_run_one_after_the_other(platform):
    """Two deploys of one model submitted together, on two workers: the later one waits
    for the earlier, then serves the next version (before, both took version 1)."""
    job = pretrain(platform, 4)
    assert platform.wait_status(job["id"], ("succeeded", "failed"))["status"] == "succeeded"
    model = next(m for m in platform.get("/v1/models")["data"] if m["job_id"] == job["id"])
    second_worker = platform.start_worker("w-deploy")
    try:
        spec = {"workers": 1, "reference_limit": 64}
        first, second = (platform.post(f"/v1/models/{model['id']}/deploy", spec, expect=202)
                         for _ in range(2))
        ended = [platform.wait_status(j["id"], ("succeeded", "failed"), timeout=240)
                 for j in (first, second)]
        assert [e["status"] for e in ended] == ["succeeded", "succeeded"], ended
        assert sorted(e["result"]["number"] for e in ended) == [1, 2]
        served = platform.get(f"/v1/models/{model['id']}")["deployment"]
        assert served["status"] == "serving" and served["number"] == 2
        assert [v["modelVersion"] for v in platform.torchserve.client().describe(
            served["name"])] == ["2.0"]
        store = platform.root / "model-store"
        assert sorted(p.name for p in store.glob(f"{served['name']}-*.mar")) == [
            f"{served['name']}-knn-v2.mar", f"{served['name']}-v2.mar"]
        assert not list(store.glob(f".staging-{served['name']}-*"))
        # when they overlapped (the later was taken before the earlier ended), it said it waited
        early, late = sorted(ended, key=lambda e: (e["started_at"], e["id"]))
        waited = [line["line"] for line in platform.get(f"/v1/jobs/{late['id']}/logs")["lines"]
                  if "waiting for job" in line["line"]]
        if late["started_at"] < early["finished_at"]:
            assert waited == [f"INFO worker.tasks: job {late['id']}: waiting for job "
                              f"{early['id']}, a deploy of the same model, to finish"], waited
        else:
            assert not waited
        deploy(platform, model["id"], "undeploy")
    finally:  # the next tests count on one worker (a job queued behind another)
        os.killpg(second_worker.pid, signal.SIGTERM)
        second_worker.wait(timeout=60)
