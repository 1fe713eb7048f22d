"""Submit, watch, evaluate, cancel and survive a killed worker, through HTTP against real
API and Celery worker processes, on the embedded defaults and on PostgreSQL + Redis."""

import os
import signal

import pytest

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "log_every": 2, "checkpoint_every": 4, "warmup_epochs": 0.2, "lambda_warmup_epochs": 0.2}


def pretrain(platform, steps, **extra):
    config = TINY | {"max_steps": steps, "epochs": steps // 8 + 1} | extra
    return platform.post("/v1/jobs", {"kind": "pretrain", "name": f"tiny-{steps}",
                                      "tags": ["it"], "queue": "gpu", "config": config})


def test_health_and_workers(platform):
    assert platform.get("/healthz") == {"status": "ok"}
    assert platform.get("/readyz") == {"status": "ready"}
    workers = platform.get("/v1/workers")
    assert [w["device"] for w in workers if w["name"] == "w1"] == ["cpu"]


def test_pretrain_metrics_model_and_evaluation(platform):
    job = pretrain(platform, 12)
    assert job["status"] == "queued" and job["kind"] == "pretrain"
    assert job["config"]["batch_size"] == 32 and job["config"]["method"] == "mec"  # defaults
    # 32 px images: the small-image recipe fills what the submission left out
    assert job["config"]["recipe"] == "small" and job["config"]["eps_sq"] == 16.0
    done = platform.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["step"] == 12 and done["progress"]["percent"] == 100.0
    assert done["worker_host"] and done["device"] == "cpu" and done["attempts"] == 1
    assert done["started_at"] and done["finished_at"] and done["last_metrics"]["loss"] < 0

    metrics = platform.get(f"/v1/jobs/{job['id']}/metrics")
    loss = metrics["series"]["loss"]
    assert loss["steps"] == list(range(1, 13)) and len(loss["values"]) == 12
    assert {"coding_length", "spectral_norm", "lr", "lambda_inv"} <= metrics["series"].keys()
    # the online monitor: kNN top-1 on held-out images and the effective rank, as series
    monitored = metrics["series"]["knn_top1"]
    assert monitored["steps"][-1] == 12 and all(0 <= v <= 100 for v in monitored["values"])
    assert all(v >= 1 for v in metrics["series"]["effective_rank"]["values"])
    assert "knn_top1" in done["result"]
    later = platform.get(f"/v1/jobs/{job['id']}/metrics",
                         params={"since_step": 10, "name": ["loss"]})
    assert later["series"]["loss"]["steps"] == [11, 12] and list(later["series"]) == ["loss"]
    coarse = platform.get(f"/v1/jobs/{job['id']}/metrics", params={"max_points": 4})
    assert coarse["stride"] == 3 and coarse["series"]["loss"]["steps"] == [3, 6, 9, 12]

    models = platform.get("/v1/models")["data"]
    model = next(m for m in models if m["job_id"] == job["id"])
    assert model["backbone"] == "convnet" and os.path.exists(model["artifacts"]["backbone"])

    evaluation = platform.post("/v1/jobs", {"kind": "evaluate",
                                            "config": {"job_id": job["id"], "protocol": "knn",
                                                       "k": 20}})
    finished = platform.wait_status(evaluation["id"], ("succeeded", "failed"))
    assert finished["status"] == "succeeded", finished["error"]
    assert 0.0 <= finished["result"]["top1"] <= 100.0
    detail = platform.get(f"/v1/models/{model['id']}")
    assert [e["protocol"] for e in detail["evaluations"]] == ["knn"]
    assert detail["evaluations"][0]["top1"] == finished["result"]["top1"]

    listed = platform.get("/v1/jobs", params={"kind": "evaluate", "status": "succeeded"})
    assert evaluation["id"] in [j["id"] for j in listed["data"]]
    tagged = platform.get("/v1/jobs", params={"tag": "it"})["data"]
    assert job["id"] in [j["id"] for j in tagged]
    assert all(j["kind"] == "pretrain" for j in tagged)


def test_baseline_method_trains_through_the_platform(platform):
    job = pretrain(platform, 6, method="byol")
    done = platform.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    assert done["config"]["method"] == "byol"
    series = platform.get(f"/v1/jobs/{job['id']}/metrics")["series"]
    assert series["loss"]["steps"] == list(range(1, 7))
    assert 0 <= series["loss"]["values"][-1] <= 8  # 2 - 2 cos, summed over the two views
    assert "coding_length" not in series and "teacher_momentum" in series


def test_a_higher_priority_job_is_claimed_first(platform):
    if platform.backend != "postgres+redis":
        pytest.skip("the embedded SQLite broker delivers in order: kombu's SQLAlchemy "
                    "transport has no priorities")
    # a key of its own: the module's key keeps its submission budget for the other tests
    auth = {"Authorization": f"Bearer {platform.new_key('priority')}"}

    def submit(name: str, steps: int, priority: int) -> dict:
        return platform.post("/v1/jobs", {
            "kind": "pretrain", "name": name, "priority": priority, "queue": "gpu",
            "config": TINY | {"max_steps": steps, "epochs": steps // 8 + 1}}, headers=auth)

    blocker = submit("blocker", 5000, 0)
    platform.wait_for(lambda: platform.get(f"/v1/jobs/{blocker['id']}")["status"] == "running",
                      120, "the blocker to run")
    low, high = submit("low", 4, 0), submit("high", 4, 9)
    assert (low["priority"], high["priority"]) == (0, 9) and high["queue"] == "gpu"
    platform.post(f"/v1/jobs/{blocker['id']}/cancel", expect=200, headers=auth)
    done = [platform.wait_status(j["id"], ("succeeded", "failed")) for j in (low, high)]
    assert all(j["status"] == "succeeded" for j in done)
    assert done[1]["started_at"] < done[0]["started_at"]  # submitted second, run first


def test_cancel_running_and_queued_jobs(platform):
    job = pretrain(platform, 5000, checkpoint_every=2)
    platform.wait_for(lambda: platform.get(f"/v1/jobs/{job['id']}")["progress"]["step"] >= 4,
                      120, "the long job to make progress")
    queued = pretrain(platform, 10)  # waits behind the running job on the only worker
    assert platform.post(f"/v1/jobs/{queued['id']}/cancel", expect=200)["status"] == "cancelled"
    platform.post(f"/v1/jobs/{job['id']}/cancel", expect=200)
    stopped = platform.wait_status(job["id"], ("cancelled",), timeout=20)
    assert stopped["checkpoint"] and os.path.exists(stopped["checkpoint"])
    assert stopped["progress"]["step"] < 5000
    again = platform.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["detail"] == \
        f"job {job['id']} is already cancelled"
    # the cancelled queued job never ran, even though its message was delivered
    assert platform.get(f"/v1/jobs/{queued['id']}")["attempts"] == 0


def test_cancel_a_running_evaluation(platform):
    """A cancel stops an evaluation at its next batch of images: cancelled, no result, no
    evaluation recorded (ResNet-18 on 2,560 images: several seconds a batch of 512)."""
    job = pretrain(platform, 1, backbone="resnet18")
    assert platform.wait_status(job["id"], ("succeeded", "failed"))["status"] == "succeeded"
    evaluation = platform.post("/v1/jobs", {"kind": "evaluate", "config": {"job_id": job["id"]}})
    platform.wait_for(lambda: platform.get(f"/v1/jobs/{evaluation['id']}")["progress"]["step"]
                      > 0, 120, "the evaluation to embed its first batch")
    platform.post(f"/v1/jobs/{evaluation['id']}/cancel", expect=200)
    stopped = platform.wait_status(evaluation["id"], ("cancelled", "succeeded", "failed"),
                                   timeout=60)
    assert stopped["status"] == "cancelled", stopped
    assert stopped["result"] is None and stopped["progress"]["step"] < 2560
    model = next(m for m in platform.get("/v1/models")["data"] if m["job_id"] == job["id"])
    assert platform.get(f"/v1/models/{model['id']}")["evaluations"] == []


def test_killed_worker_job_resumes_from_its_checkpoint(platform):
    platform.start_worker("w2")
    job = pretrain(platform, 60, checkpoint_every=4)
    runner = platform.runner_of(job["id"], past_step=10)
    os.killpg(platform.workers[runner].pid, signal.SIGKILL)  # no goodbye, no checkpoint
    platform.workers[runner].wait()
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["resumes"] == 1
    steps = platform.get(f"/v1/jobs/{job['id']}/metrics", params={"name": ["loss"]})
    assert steps["series"]["loss"]["steps"] == list(range(1, 61))  # none lost or duplicated
    platform.start_worker(f"{runner}-again")


def test_bad_requests_get_clear_errors(platform):
    c = platform.client
    r = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"backbone": "vit"}})
    assert r.status_code == 422 and "config.backbone" in r.json()["detail"]
    r = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"colour": 1}})
    assert r.status_code == 422 and "config.colour: Extra inputs" in r.json()["detail"]
    r = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"method": "moco"}})
    assert r.status_code == 422 and "config.method" in r.json()["detail"]
    r = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"recipe": "huge"}})
    assert r.status_code == 422 and "config.recipe" in r.json()["detail"]
    r = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"batch_size": 0}})
    assert r.status_code == 422 and "config.batch_size" in r.json()["detail"]
    r = c.post("/v1/jobs", json={"kind": "train", "config": {}})
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    r = c.post("/v1/jobs", json={"kind": "evaluate", "config": {"job_id": 999999}})
    assert r.status_code == 404 and r.json()["detail"] == "config.job_id: job 999999 not found"
    before = platform.get("/v1/jobs")["count"]
    assert platform.get("/v1/jobs")["count"] == before  # none of these created a job
    r = c.get("/v1/jobs/999999")
    assert r.status_code == 404 and r.json()["detail"] == "job 999999 not found"
    assert c.get("/v1/models/999999").status_code == 404
    assert c.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422



def test_data_dir_must_stay_under_the_data_roots(platform, tmp_path):
    c = platform.client
    before = platform.get("/v1/jobs")["count"]
    escape = tmp_path / "escape"
    escape.symlink_to("/etc")
    inside = platform.root / "data" / "datasets"
    inside.mkdir(parents=True, exist_ok=True)
    (inside / "link").symlink_to("/etc")
    for data_dir in ["/etc", "/usr/share/datasets/../../../etc", str(escape),
                     str(inside / "link"), str(inside / ".." / "mec.db")]:
        r = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {
            "dataset": "fashion-mnist", "data_dir": data_dir}})
        assert r.status_code == 422, data_dir
        assert r.json()["detail"].startswith(f"config.data_dir: {data_dir} is outside")
    assert platform.get("/v1/jobs")["count"] == before
    fashion = inside / "fashion-mnist"  # the train split's file names: all a check reads
    fashion.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (fashion / name).write_bytes(b"")
    ok = c.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {
        "dataset": "fashion-mnist", "max_steps": 1, "data_dir": str(fashion)}})
    assert ok.status_code == 201, ok.text
    c.post(f"/v1/jobs/{ok.json()['id']}/cancel")


def test_sigterm_hands_the_job_over_with_a_checkpoint(platform):
    """A worker stopped with SIGTERM (a deploy) checkpoints at once and re-queues its job,
    which resumes on another worker."""
    platform.start_worker("w3")
    job = pretrain(platform, 60, checkpoint_every=50)
    runner = platform.runner_of(job["id"], past_step=6)
    proc = platform.workers[runner]
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(60)  # warm shutdown ends after one more step, not after the whole job
    handed = platform.get(f"/v1/jobs/{job['id']}")
    assert handed["checkpoint"] and not handed["checkpoint"].endswith("step_00000050.pt")
    platform.start_worker(f"{runner}-after-term")
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and "lease" not in (done["error"] or "")
    steps = platform.get(f"/v1/jobs/{job['id']}/metrics", params={"name": ["loss"]})
    assert steps["series"]["loss"]["steps"] == list(range(1, 61))
