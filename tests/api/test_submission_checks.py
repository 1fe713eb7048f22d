"""What a submission can know before a job is queued: the dataset's files where a worker
will look (a typo in data_dir gets the nearest existing directory), a precision the device
cannot run, a GPU no live worker has (the job's `waiting` says so); and POST
/v1/jobs/validate, which answers the same without creating a job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select

from mec_core.config import METHOD_RECIPES, RECIPES, TrainConfig
from mec_platform.db import session_scope
from mec_platform.tables import Job, Worker, utcnow

TINY = {"backbone": "convnet", "batch_size": 32, "max_steps": 2}


def _jobs() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count(Job.id)))


@pytest.fixture
def datasets(embedded):
    """The data root every platform has (MEC_DATA_DIR/datasets), with a Fashion-MNIST
    directory holding the train split's file names."""
    root = embedded.data_dir / "datasets"
    fmnist = root / "fashion-mnist"
    fmnist.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz"):
        (fmnist / name).write_bytes(b"")
    return root


def _post(client, config, path="/v1/jobs", kind="pretrain"):
    return client.post(path, json={"kind": kind, "config": config})


def test_data_dir__a_typo_gets_no_such_directory_and_the_nearest_sibling(client, datasets):
    before = _jobs()
    r = _post(client, TINY | {"dataset": "fashion-mnist", "data_dir": str(datasets / "fashion")})
    assert r.status_code == 422
    assert r.json()["detail"] == (f"config.data_dir: fashion-mnist: no such directory "
                                  f"{datasets}/fashion; did you mean {datasets}/fashion-mnist?")
    r = client.post("/v1/jobs", json={"kind": "sweep", "config": {
        "base": TINY | {"dataset": "fashion-mnist", "data_dir": str(datasets / "fashon-mnist")},
        "space": {"base_lr": {"choice": [0.1, 0.5]}}}})
    assert r.status_code == 422 and r.json()["detail"].startswith(
        "config.base.data_dir: fashion-mnist: no such directory")
    assert _jobs() == before
    ok = _post(client, TINY | {"dataset": "fashion-mnist",
                               "data_dir": str(datasets / "fashion-mnist")})
    assert ok.status_code == 201, ok.text


def test_dataset__missing_files_or_directory_are_named(client, datasets):
    empty = datasets / "empty-cifar"
    empty.mkdir(exist_ok=True)
    r = _post(client, TINY | {"dataset": "cifar10", "data_dir": str(empty)})
    assert r.status_code == 422 and r.json()["detail"] == (
        f"config.data_dir: cifar10: {empty} has no data_batch_1, data_batch_2, data_batch_3, "
        "data_batch_4, data_batch_5 (python-pickle batches)")
    r = _post(client, TINY | {"dataset": "cifar10"})
    assert r.status_code == 422 and r.json()["detail"] == \
        "config.dataset: dataset 'cifar10' needs a data directory (data_dir)"
    r = _post(client, TINY | {"dataset": "imagefolder", "data_dir": str(empty)})
    assert r.status_code == 422 and "has no class sub-folders" in r.json()["detail"]
    # a built-in dataset reads no folder: one given with it would be ignored
    before = _jobs()
    r = _post(client, TINY | {"dataset": "digits", "data_dir": str(datasets / "fashion-mnist")})
    assert r.status_code == 422 and r.json()["detail"] == (
        "config.data_dir: dataset 'digits' reads no directory (scikit-learn bundles it): leave "
        "data_dir out, or name the dataset that the directory holds")
    r = client.post("/v1/jobs", json={"kind": "sweep", "config": {
        "base": TINY | {"dataset": "synthetic", "data_dir": str(empty)},
        "space": {"base_lr": {"choice": [0.1, 0.5]}}}})
    assert r.status_code == 422 and r.json()["detail"].startswith(
        "config.base.data_dir: dataset 'synthetic' reads no directory")
    assert _jobs() == before


def test_precision__fp16_on_a_cpu_is_refused_listing_the_supported_ones(client):
    r = _post(client, TINY | {"dataset": "synthetic", "device": "cpu", "precision": "fp16"})
    assert r.status_code == 422 and r.json()["detail"] == (
        "config.precision: fp16 is not supported on cpu; choose one of auto, fp32, bf16")


@pytest.fixture
def cpu_workers(client):
    with session_scope() as s:
        s.execute(delete(Worker))
        s.add(Worker(name="cpu-1", host="h", queues=["gpu", "cpu"], device="cpu", processes=1,
                     seen_at=utcnow()))
        s.add(Worker(name="gone-gpu", host="h", queues=["gpu"], processes=1,
                     device="cuda:0 NVIDIA H200", seen_at=utcnow() - timedelta(hours=1)))
    yield
    with session_scope() as s:
        s.execute(delete(Worker))


def test_device_cuda__waits_saying_no_live_worker_has_a_gpu(client, cpu_workers):
    r = _post(client, TINY | {"dataset": "synthetic", "device": "cuda"})
    assert r.status_code == 201
    assert r.json()["waiting"].startswith("asks for device cuda; no live worker on queue "
                                          "'gpu' has a GPU (they run on cpu)")
    assert _post(client, TINY | {"dataset": "synthetic"}).json()["waiting"] is None
    with session_scope() as s:  # a GPU worker joins
        s.add(Worker(name="gpu-1", host="h", queues=["gpu"], device="cuda:0 NVIDIA H200",
                     processes=1, seen_at=utcnow()))
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["waiting"] is None


def test_validate__the_resolved_config_and_the_checks_with_nothing_created(client, datasets,
                                                                            cpu_workers):
    before = _jobs()
    r = _post(client, {"dataset": "synthetic", "device": "cuda"}, "/v1/jobs/validate")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "pretrain" and body["queue"] == "gpu"
    # every field, from the recipe this dataset gets (small images: the small recipe)
    assert body["config"]["recipe"] == "small"
    assert body["config"] == TrainConfig(dataset="synthetic", device="cuda").model_dump(
        mode="json") | {"image_size": 32, "small_stem": True, "channels_last": True,
                         "hflip": True, "teacher": "stop_grad", "predictor": True}
    for field, value in (RECIPES["small"] | METHOD_RECIPES["small", "mec"]).items():
        assert body["config"][field] == value, field
    assert body["waiting"].startswith("asks for device cuda")
    r = _post(client, {"dataset": "fashion-mnist", "data_dir": str(datasets / "fmnist")},
              "/v1/jobs/validate")
    assert r.status_code == 422 and "did you mean" in r.json()["detail"]
    r = _post(client, {"job_id": 10**9}, "/v1/jobs/validate", kind="evaluate")
    assert r.status_code == 404 and r.json()["detail"].startswith("config.job_id:")
    assert _jobs() == before


def test_nodes__a_job_of_several_nodes_needs_a_ray_cluster(client, embedded, monkeypatch):
    config = TINY | {"dataset": "synthetic", "nodes": 2, "batch_size": 32}
    before = _jobs()
    r = _post(client, config)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("config.nodes: a job of 2 nodes runs on a Ray "
                                         "cluster") and "MEC_RAY_ADDRESS" in r.json()["detail"]
    assert "`mec up --ray-nodes N` starts a local one" in r.json()["detail"]
    monkeypatch.setattr(embedded, "ray_address", "")  # the compose file's, without the profile
    assert _post(client, config).status_code == 422
    assert _jobs() == before
    monkeypatch.setattr(embedded, "ray_address", "127.0.0.1:6379")
    r = _post(client, config)
    assert r.status_code == 201, r.text
    assert r.json()["slots"] is None and r.json()["config"]["nodes"] == 2
    # its processes are the Ray cluster's: no "needs N processes" from the local workers
    assert "processes" not in (r.json()["waiting"] or "")


def test_deploy__a_reference_set_not_where_the_workers_look_is_refused_naming_the_field(
        client, datasets, synthetic_model):
    url = f"/v1/models/{synthetic_model[1]}/deploy"
    before = _jobs()
    refused = {
        (("reference_dataset", "imagefolder"),):
            "reference_dataset: dataset 'imagefolder' needs a data directory (data_dir)",
        (("reference_dataset", "fashion-mnist"), ("reference_data_dir", f"{datasets}/fashion")):
            f"reference_data_dir: fashion-mnist: no such directory {datasets}/fashion; did you "
            f"mean {datasets}/fashion-mnist?",
        (("reference_dataset", "fashion-mnist"),
         ("reference_data_dir", f"{datasets}/fashion-mnist"),
         ("reference_split", "test")):  # the folder holds the train split only
            f"reference_data_dir: fashion-mnist: {datasets}/fashion-mnist has no "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (IDX files, or .gz)",
        (("reference_data_dir", f"{datasets}/fashion-mnist"),):  # the model's synthetic
            "reference_data_dir: dataset 'synthetic' reads no directory (it is generated): "
            "leave data_dir out, or name the dataset that the directory holds",
    }
    for body, detail in refused.items():
        r = client.post(url, json=dict(body))
        assert r.status_code == 422 and r.json()["detail"] == detail, r.text
    assert _jobs() == before
    ok = client.post(url, json={"reference_dataset": "fashion-mnist",
                                "reference_data_dir": str(datasets / "fashion-mnist")})
    assert ok.status_code == 202, ok.text
