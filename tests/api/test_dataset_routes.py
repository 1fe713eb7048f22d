"""/v1/datasets in process (SQLite, a file:// store): create, upload versions, read, delete,
the scopes and projects, and jobs that name a dataset:// version."""

from __future__ import annotations

import io
import tarfile
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from api.main import app
from mec_platform import keys
from mec_platform.db import session_scope
from mec_platform.keys import Scope
from mec_platform.storage import get_store
from mec_platform.tables import Dataset, DatasetVersion, Model


def archive(classes: int = 2, per_class: int = 5, seed: int = 0, extra: dict | None = None
            ) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        members = {f"c{c}/{i}.png": _png(rng) for c in range(classes) for i in range(per_class)}
        for name, data in (members | (extra or {})).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _png(rng) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def upload(client, name: str, body: bytes, **params):
    return client.post(f"/v1/datasets/{name}/versions", content=body, params=params,
                       headers={"Content-Type": "application/gzip"})


@pytest.fixture
def name(client) -> str:
    name = f"ds-{uuid.uuid4().hex[:8]}"
    assert client.post("/v1/datasets", json={"name": name, "description": "tiny"}
                       ).status_code == 201
    return name


def test_versions_are_numbered_described_and_an_upload_sent_again_is_the_same(client, name):
    body = archive()  # gzip stamps the second it was written: the same bytes are sent twice
    first = upload(client, name, body, test_fraction=0.2, seed=3)
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert v1["number"] == 1 and v1["uri"] == f"dataset://{name}/1"
    assert v1["images"] == 10 and v1["classes"] == {"c0": {"train": 4, "test": 1},
                                                    "c1": {"train": 4, "test": 1}}
    assert v1["split"] == {"test_fraction": 0.2, "seed": 3} and len(v1["thumbnails"]) == 2
    assert upload(client, name, body, test_fraction=0.2, seed=3).json()["number"] == 1
    assert upload(client, name, archive(seed=1)).json()["number"] == 2
    shown = client.get(f"/v1/datasets/{name}").json()
    assert shown["latest"] == 2 and [v["number"] for v in shown["versions"]] == [1, 2]
    assert name in [d["name"] for d in client.get("/v1/datasets").json()["data"]]


def test_a_bad_archive_is_refused_with_its_members_and_keeps_nothing(client, name):
    bad = upload(client, name, archive(extra={"../../etc/x.png": b"x", "c0/read.me": b"hi"}))
    assert bad.status_code == 422
    assert "../../etc/x.png: its path leaves the archive" in bad.json()["detail"]
    assert "c0/read.me: not an image file" in bad.json()["detail"]
    assert client.get(f"/v1/datasets/{name}").json()["versions"] == []
    wrong_type = client.post(f"/v1/datasets/{name}/versions", content=b"{}",
                             headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "body:" in wrong_type.json()["detail"]
    assert upload(client, "nope", archive()).status_code == 404


def test_names_are_unique_per_project_and_other_projects_see_nothing(client, name):
    assert client.post("/v1/datasets", json={"name": name}).status_code == 409
    assert client.post("/v1/datasets", json={"name": "../x"}).status_code == 422
    with session_scope() as s:
        _, other = keys.create(s, "other", project="elsewhere")
        _, reader = keys.create(s, "reader", scopes=[Scope.JOBS_READ])
    with TestClient(app, headers={"Authorization": f"Bearer {other}"}) as c:
        assert c.get(f"/v1/datasets/{name}").status_code == 404
        assert name not in [d["name"] for d in c.get("/v1/datasets").json()["data"]]
        assert upload(c, name, archive()).status_code == 404
    with TestClient(app, headers={"Authorization": f"Bearer {reader}"}) as c:
        assert c.get(f"/v1/datasets/{name}").status_code == 200
        assert upload(c, name, archive()).status_code == 403
        assert c.post("/v1/datasets", json={"name": "mine"}).status_code == 403


def test_a_job_trains_on_the_exact_version_it_was_submitted_with(client, name):
    upload(client, name, archive())
    spec = {"kind": "pretrain", "config": {"dataset": "imagefolder", "batch_size": 8,
                                           "data_dir": f"dataset://{name}"}}
    job = client.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert job.json()["config"]["data_dir"] == f"dataset://{name}/1"  # pinned
    upload(client, name, archive(seed=5))
    assert client.post("/v1/jobs/validate", json=spec).json()["config"]["data_dir"] == \
        f"dataset://{name}/2"
    missing = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "imagefolder", "data_dir": f"dataset://{name}/9"}})
    assert missing.status_code == 404 and missing.json()["detail"] == \
        f"config.data_dir: dataset '{name}' has no version 9"
    wrong = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "cifar10", "data_dir": f"dataset://{name}"}})
    assert wrong.status_code == 422 and "imagefolder" in wrong.json()["detail"]


def test_a_deploy_references_the_exact_version_the_model_trained_on_or_the_one_named(
        client, name):
    """A model of a dataset:// version: its deploy's reference set is that version (its
    own config names the training host's unpacked copy, no use elsewhere); one named is
    pinned too; a missing one is 404 and another dataset kind 422, naming the field."""
    upload(client, name, archive())
    job = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "imagefolder", "batch_size": 8, "data_dir": f"dataset://{name}"}}).json()
    upload(client, name, archive(seed=5))
    with session_scope() as s:
        model = Model(job_id=job["id"], project="default", name="m", backbone="convnet",
                      dataset="imagefolder", artifacts={})
        s.add(model)
        s.flush()
        model_id = model.id
    deploy = lambda body=None: client.post(f"/v1/models/{model_id}/deploy", json=body)
    trained = deploy().json()["config"]
    assert (trained["reference_dataset"], trained["reference_data_dir"]) == \
        ("imagefolder", f"dataset://{name}/1")
    assert deploy({"reference_data_dir": f"dataset://{name}"}).json()["config"][
        "reference_data_dir"] == f"dataset://{name}/2"
    missing = deploy({"reference_data_dir": f"dataset://{name}/7"})
    assert missing.status_code == 404 and missing.json()["detail"] == \
        f"reference_data_dir: dataset '{name}' has no version 7"
    other = deploy({"reference_dataset": "digits", "reference_data_dir": f"dataset://{name}"})
    assert other.status_code == 422 and "reference_dataset" in other.json()["detail"]
    assert deploy({"reference_dataset": "digits"}).json()["config"][
        "reference_data_dir"] is None  # another reference set: the model's version not used
    # another project's model cannot name this project's dataset
    with session_scope() as s:
        _, other = keys.create(s, "other deployer", project="elsewhere")
    with TestClient(app, headers={"Authorization": f"Bearer {other}"}) as c:
        their_job = c.post("/v1/jobs", json={"kind": "pretrain", "config": {
            "dataset": "synthetic", "batch_size": 8}}).json()
        with session_scope() as s:
            theirs = Model(job_id=their_job["id"], project="elsewhere", name="theirs",
                           backbone="convnet", dataset="imagefolder", artifacts={})
            s.add(theirs)
            s.flush()
            theirs_id = theirs.id
        foreign = [c.post(f"/v1/models/{theirs_id}/deploy", json={"reference_data_dir": uri})
                   for uri in (f"dataset://{name}", f"dataset://{name}/1")]
    assert [(r.status_code, r.json()["detail"]) for r in foreign] == [
        (404, f"reference_data_dir: dataset '{name}' not found")] * 2


def test_a_batch_larger_than_the_images_a_run_trains_on_is_refused_at_submission(client, name):
    """4 classes of 10 images, a fifth held out for testing: 32 in the train split, 29 once
    the online kNN holds out its tenth; the default batch of 256 cannot make one step."""
    upload(client, name, archive(classes=4, per_class=10), test_fraction=0.2)
    config = {"dataset": "imagefolder", "data_dir": f"dataset://{name}"}
    for route in ("/v1/jobs", "/v1/jobs/validate"):
        refused = client.post(route, json={"kind": "pretrain", "config": config})
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            f"config.batch_size: 256 is more than the 29 images a run trains on in "
            f"dataset://{name}/1 (32 in its train split, less the online kNN's held-out "
            "tenth): set batch_size to at most 29, or upload more images")
    assert client.post("/v1/jobs", json={"kind": "pretrain", "config": config | {
        "batch_size": 29}}).status_code == 201
    assert client.post("/v1/jobs", json={"kind": "pretrain", "config": config | {
        "batch_size": 32, "monitor_every": 0}}).status_code == 201  # nothing held out


def test_deleting_a_dataset_removes_its_versions_files(client, name):
    upload(client, name, archive())
    with session_scope() as s:
        key = s.scalar(select(DatasetVersion.key).join(Dataset).where(Dataset.name == name))
    stored = get_store()
    assert stored.stat(key) is not None
    assert client.delete(f"/v1/datasets/{name}").status_code == 204
    assert stored.stat(key) is None and client.get(f"/v1/datasets/{name}").status_code == 404


def test_once_a_dataset_is_deleted_its_jobs_evaluations_are_refused_at_submission(client,
                                                                                  name):
    """An evaluation without a dataset of its own reads the one its job trained on: gone,
    it is refused when submitted (404 naming config.job_id), not when a worker claims it."""
    upload(client, name, archive())
    job = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "imagefolder", "batch_size": 8, "data_dir": f"dataset://{name}"}}).json()
    evaluate = {"kind": "evaluate", "config": {"job_id": job["id"]}}
    assert client.post("/v1/jobs/validate", json=evaluate).status_code == 200
    assert client.delete(f"/v1/datasets/{name}").status_code == 204
    refused = client.post("/v1/jobs", json=evaluate)
    assert refused.status_code == 404 and refused.json()["detail"] == (
        f"config.job_id: job {job['id']} trained on dataset://{name}/1, which is gone "
        f"(dataset '{name}' not found): evaluate it on another dataset (config.dataset, "
        "config.data_dir)")
    again = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "imagefolder", "data_dir": f"dataset://{name}/1"}})
    assert again.status_code == 404 and again.json()["detail"] == \
        f"config.data_dir: dataset '{name}' not found"


@pytest.mark.parametrize("version", ["0", "-1", "01x"])
def test_a_version_that_is_not_a_positive_number_is_refused(client, name, version):
    refused = client.post("/v1/jobs", json={"kind": "pretrain", "config": {
        "dataset": "imagefolder", "data_dir": f"dataset://{name}/{version}"}})
    assert refused.status_code == 422 and "versions count from 1" in refused.json()["detail"]
