"""A team's own images over REST, with nothing shared on disk between the API and the
worker: each has its own MEC_DATA_DIR; they share PostgreSQL, Redis and an S3 server
(SeaweedFS). Upload an archive of PNGs made here -> pretrain on dataset://NAME ->
evaluate with kNN on the version's held-out split (also through the `mec datasets`
commands and the client); the job's checkpoint and export in the store. A deployment from
that store, and a worker killed mid-run: tests/integration/test_store_s3.py."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from harness import images_archive, png, s3_platform

from mec_client import APIError, Client


@pytest.fixture
def split_platform(tmp_path, s3_server):
    with s3_platform(tmp_path, s3_server) as plat:
        plat.start_api(MEC_DATA_DIR=str(tmp_path / "api"))
        plat.start_worker("w1", MEC_DATA_DIR=str(tmp_path / "worker"))
        yield plat


def test_train_and_evaluate_on_an_uploaded_dataset_with_nothing_shared_on_disk(
        split_platform, tmp_path):
    plat = split_platform
    archive = tmp_path / "shapes.tar.gz"
    images_archive(archive)
    env = plat.env | {"MEC_API_URL": plat.url, "MEC_API_KEY": plat.key}
    mec = lambda *a: subprocess.run([sys.executable, "-m", "mec_client", *a], env=env,
                                    capture_output=True, text=True, timeout=300)
    assert mec("datasets", "create", "shapes", "--description", "made by the test"
               ).returncode == 0
    done = mec("datasets", "upload", "shapes", str(archive), "--test-fraction", "0.25")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dataset://shapes/1: 240 images in 4 classes")

    client = Client(plat.url, plat.key)
    version = client.datasets.get("shapes").versions[0]
    assert version.classes["class0"] == {"train": 45, "test": 15}
    job = client.submit({"kind": "pretrain", "name": "on-shapes", "config": {
        "dataset": "imagefolder", "data_dir": "dataset://shapes", "image_size": 16,
        "backbone": "convnet", "batch_size": 32, "proj_dim": 32, "pred_hidden_dim": 16,
        "epochs": 1, "max_steps": 4, "log_every": 2, "warmup_epochs": 0.1,
        "lambda_warmup_epochs": 0.1}})
    assert job.config["data_dir"] == "dataset://shapes/1"
    done = client.wait(job.id, timeout=300, poll=0.5)
    assert done.status == "succeeded", done.error
    # its checkpoint and export are in the store, the worker kept no copy of them
    model = client._call("GET", "/v1/models")["data"][0]
    assert done.checkpoint.startswith("s3://") and all(
        ref.startswith(f"{plat.env['MEC_STORAGE_URL']}/jobs/{job.id}/")
        for ref in model["artifacts"].values())
    assert not list((tmp_path / "worker" / "artifacts").rglob("*.pt"))
    evaluation = client.wait(client.evaluate(job.id, "knn", k=5).id, timeout=300, poll=0.5)
    assert evaluation.status == "succeeded", evaluation.error
    assert evaluation.result["test_size"] == 60 and evaluation.result["top1"] > 25
    # the worker unpacked the version into its own cache; the API never held it on disk
    assert list((tmp_path / "worker" / "cache").glob("*/image-folder/test/class3/*.png"))
    assert not (tmp_path / "api" / "artifacts").exists() or not list(
        (tmp_path / "api" / "artifacts").rglob("*.tar"))
    listed = mec("datasets", "list")
    assert "shapes" in listed.stdout and "240" in listed.stdout
    shown = mec("datasets", "show", "shapes")
    assert shown.returncode == 0, shown.stderr
    assert "dataset://shapes/1  240 images" in shown.stdout and "sizes 16x16 ×240" in shown.stdout


def test_a_version_read_in_place_from_an_s3_prefix_is_pinned_to_its_contents(
        split_platform, s3_server, tmp_path):
    plat = split_platform
    bucket = s3_server.bucket("team-images")
    s3 = s3_server.s3()
    for c in range(3):
        for i in range(20):
            s3.put_object(Bucket=bucket, Key=f"catalogue/class{c}/{i}.png",
                          Body=png(1000 * c + i % 5, side=16))
    client = Client(plat.url, plat.key)
    client.datasets.create("catalogue")
    made = client._call("POST", "/v1/datasets/catalogue/versions",
                        json={"source": f"s3://{bucket}/catalogue"},
                        params={"test_fraction": 0.25})
    assert made["source"] == f"s3://{bucket}/catalogue" and made["images"] == 60
    assert made["classes"]["class2"] == {"train": 15, "test": 5}
    assert len(made["thumbnails"]) == 3
    config = {"dataset": "imagefolder", "data_dir": "dataset://catalogue", "image_size": 16,
              "backbone": "convnet", "batch_size": 16, "proj_dim": 32, "pred_hidden_dim": 16,
              "epochs": 1, "max_steps": 2, "warmup_epochs": 0.1, "lambda_warmup_epochs": 0.1}
    job = client.wait(client.submit({"kind": "pretrain", "config": config}).id, timeout=300,
                      poll=0.5)
    assert job.status == "succeeded", job.error

    s3.put_object(Bucket=bucket, Key="catalogue/readme.txt", Body=b"not an image")
    with pytest.raises(APIError) as refused:
        client._call("POST", "/v1/datasets/catalogue/versions",
                     json={"source": f"s3://{bucket}/catalogue"})
    assert refused.value.status == 422 and "readme.txt: not an image file" in \
        refused.value.detail
    assert client.datasets.get("catalogue").latest == 1  # nothing kept

    # an object changed after the version was made: a host without the version cached
    # refuses to train on other contents than the version's
    s3.put_object(Bucket=bucket, Key="catalogue/class0/0.png", Body=png(99, side=16))
    shutil.rmtree(tmp_path / "worker" / "cache")
    failed = client.wait(client.submit({"kind": "pretrain", "config": config}).id,
                         timeout=300, poll=0.5)
    assert failed.status == "failed" and "catalogue/class0/0.png" in failed.error
