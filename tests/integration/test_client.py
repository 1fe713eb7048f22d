"""mec_client and the `mec jobs|models|login` commands against the real API and Celery
worker (embedded backend; the routes under them are tested on PostgreSQL + Redis too)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from tcp_proxy import TcpProxy

from mec_client import APIError, Client, TransportError
from mec_client.models import JobPublic

pytestmark = pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "log_every": 2, "checkpoint_every": 4, "warmup_epochs": 0.2,
        "lambda_warmup_epochs": 0.2}


def pretrain(steps: int, **extra) -> dict:
    return {"kind": "pretrain", "name": f"client-{steps}", "tags": ["client"],
            "config": TINY | {"max_steps": steps, "epochs": steps // 8 + 1} | extra}


def mec(platform, *args: str, key: str | None = None, config: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    env = platform.env | {"MEC_API_URL": platform.url, "MEC_API_KEY": key or platform.key,
                          "COLUMNS": "160"}  # a wide terminal: rich folds cells at 80
    if config:
        env = {k: v for k, v in env.items() if k not in ("MEC_API_URL", "MEC_API_KEY")}
        env["MEC_CLIENT_CONFIG"] = config
    done = subprocess.run([sys.executable, "-m", "mec_client", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


def test_client__submit_wait_metrics_evaluate_and_models(platform):
    client = Client(platform.url, platform.key)
    job = client.submit(pretrain(8))
    assert isinstance(job, JobPublic) and job.status == "queued"
    seen = []
    done = client.wait(job.id, timeout=240, poll=0.5, on_progress=seen.append)
    assert done.status == "succeeded", done.error
    assert seen[-1] == done and {j.status for j in seen} <= {"queued", "running", "succeeded"}
    assert client.job(job.id).progress.step == 8

    metrics = client.metrics(job.id, names=["loss", "lr"])
    assert set(metrics.series) == {"loss", "lr"} and metrics.series["loss"].steps == list(
        range(1, 9))
    frame = client.metrics(job.id, frame=True)
    assert list(frame.index) == list(range(1, 9)) and frame.index.name == "step"
    assert frame["loss"].tolist() == metrics.series["loss"].values

    listed = client.jobs(tag="client", status="succeeded")
    assert job.id in [j.id for j in listed.data] and listed.count >= 1
    evaluation = client.wait(client.evaluate(job.id, test_limit=64, train_limit=128).id,
                             timeout=240, poll=0.5)
    assert evaluation.status == "succeeded", evaluation.error
    model = next(m for m in client.models().data if m.job_id == job.id)
    assert client.model(model.id).evaluations[0].protocol == "knn"


def test_client__errors_carry_the_api_detail(platform):
    client = Client(platform.url, platform.key)
    with pytest.raises(APIError) as bad:
        client.submit(pretrain(8, batch_size=0))
    assert bad.value.status == 422 and "config.batch_size" in bad.value.detail
    with pytest.raises(APIError) as missing:
        client.job(10**9)
    assert missing.value.status == 404 and "job" in missing.value.detail
    with pytest.raises(APIError) as unauthorized:
        Client(platform.url, "mec_not_a_key").jobs()
    assert unauthorized.value.status == 401


def test_client__cancel_and_idempotent_submit(platform):
    client = Client(platform.url, platform.key)
    first = client.submit(pretrain(400), idempotency_key="client-cancel-1")
    again = client.submit(pretrain(400), idempotency_key="client-cancel-1")
    assert again.id == first.id  # the retry of a lost answer submits nothing new
    cancelled = client.cancel(first.id)
    assert cancelled.cancel_requested or cancelled.status == "cancelled"
    assert client.wait(first.id, timeout=60, poll=0.5).status == "cancelled"
    with pytest.raises(APIError) as finished:
        client.cancel(first.id)
    assert finished.value.status == 409


def test_client__retries_429_after_retry_after(platform):
    """The burst of submissions is 20 per key here (MEC_SUBMIT_BURST): the 21st is refused
    with Retry-After, and a client with retries waits it out and succeeds."""
    key = platform.new_key("client-429")
    eager, patient = Client(platform.url, key, retries=0), Client(platform.url, key, retries=2)
    target = eager.submit(pretrain(400))
    eager.cancel(target.id)
    refused = None
    for _ in range(25):
        try:
            eager.cancel(eager.evaluate(target.id).id)
        except APIError as exc:
            refused = exc
            break
    assert refused is not None and refused.status == 429 and "retry in" in refused.detail
    started = time.monotonic()
    job = patient.evaluate(target.id)
    assert job.status == "queued" and time.monotonic() - started >= 1
    patient.cancel(job.id)


def test_client__retries_reads_not_writes_over_a_broken_connection(platform):
    proxy = TcpProxy(("127.0.0.1", platform.port))
    try:
        client = Client(f"http://127.0.0.1:{proxy.port}", platform.key, retries=5,
                        backoff=0.2)
        job = client.submit(pretrain(400))
        proxy.cut()
        with pytest.raises(TransportError):
            client.cancel(job.id)  # not repeatable: it may have been done; not retried
        threading.Timer(0.5, proxy.restore).start()
        assert client.job(job.id).id == job.id  # a read: retried until the link is back
        assert proxy.refused >= 2
        client.cancel(job.id)
    finally:
        proxy.close()


def test_client__logs_follow_streams_lines_as_they_come(platform):
    client = Client(platform.url, platform.key)
    job = client.submit(pretrain(300, log_every=50, checkpoint_every=100))
    arrived = []
    for line in client.logs(job.id, follow=True):  # ends by itself once the job has ended
        arrived.append((line, client.job(job.id).status))
    texts = [line.line for line, _ in arrived]
    assert arrived[0][1] == "running", texts  # the first line came while the job trained
    assert texts[0].startswith(f"INFO worker.tasks: job {job.id}: attempt 1 on ")
    assert any(t.startswith("INFO mec_core.train: epoch 0 done (step 8 of 300)")
               for t in texts)
    assert texts[-1] == f"INFO worker.tasks: job {job.id}: succeeded"
    assert [line.id for line, _ in arrived] == [line.id for line in client.logs(job.id)]


def test_cli__logs_of_a_failed_job_end_with_its_traceback(platform):
    job = Client(platform.url, platform.key).submit(pretrain(8, train_limit=16))
    platform.wait_status(job.id, ("failed", "succeeded"))
    printed = mec(platform, "jobs", "logs", str(job.id), "-f").stdout.splitlines()
    assert any(line.endswith("[1 worker] Traceback (most recent call last):")
               for line in printed), printed
    assert any("ValueError: batch_size 32 exceeds the 16 training images" in line
               for line in printed)
    assert f"job {job.id} failed: ValueError: batch_size 32" in printed[-1]
    as_json = [json.loads(line) for line in mec(platform, "jobs", "logs", str(job.id),
                                                "--json").stdout.splitlines()]
    assert [j["line"] for j in as_json] == [line.split("] ", 1)[1] for line in printed]


def test_cli__submit_watch_show_list_metrics(platform, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("kind: pretrain\nname: from-yaml\ntags: [cli]\nconfig:\n"
                    + "".join(f"  {k}: {v}\n" for k, v in TINY.items()) + "  max_steps: 400\n")
    # the file's epochs: 1 (8 steps of 32 of 256 images); --max-steps 6 stops before
    submitted = json.loads(mec(platform, "jobs", "submit", "-f", str(spec), "--max-steps", "6",
                               "--name", "cli-job", "--json").stdout)
    assert submitted["name"] == "cli-job" and submitted["tags"] == ["cli"]
    assert submitted["config"]["max_steps"] == 6  # the flag over the file's field

    watched = mec(platform, "jobs", "watch", str(submitted["id"])).stdout.splitlines()
    # not a terminal: a line each time the job changes, then how it ended
    assert watched[-1] == f"job {submitted['id']} succeeded"
    assert all(a != b for a, b in zip(watched, watched[1:])), watched
    assert any(" step " in line and "/6 (" in line for line in watched[:-1]), watched
    shown = mec(platform, "jobs", "show", str(submitted["id"])).stdout
    assert "succeeded" in shown and "step 6/6" in shown
    listed = json.loads(mec(platform, "jobs", "list", "--tag", "cli", "--json").stdout)
    assert [j["id"] for j in listed["data"]] == [submitted["id"]]
    table = mec(platform, "jobs", "list", "--tag", "cli").stdout
    assert "cli-job" in table and "succeeded" in table
    metrics = json.loads(mec(platform, "jobs", "metrics", str(submitted["id"]), "--name",
                             "loss", "--json").stdout)
    assert metrics["series"]["loss"]["steps"] == list(range(1, 7))
    assert "loss" in mec(platform, "jobs", "metrics", str(submitted["id"])).stdout


def test_cli__bad_field_cancel_and_login(platform, tmp_path):
    bad = mec(platform, "jobs", "submit", "--batch-size", "0", check=False)
    assert bad.returncode == 1 and "422" in bad.stderr and "config.batch_size" in bad.stderr
    job = json.loads(mec(platform, "jobs", "submit", "--dataset", "synthetic", "--backbone",
                         "convnet", "--max-steps", "400", "--json").stdout)
    assert "cancel" in mec(platform, "jobs", "cancel", str(job["id"])).stdout

    config = tmp_path / "client.json"
    wrong = mec(platform, "login", "--url", platform.url, "--key", "mec_wrong",
                config=str(config), check=False)
    assert wrong.returncode == 1 and "401" in wrong.stderr and not config.exists()
    mec(platform, "login", "--url", platform.url, "--key", platform.key, config=str(config))
    assert oct(os.stat(config).st_mode & 0o777) == "0o600"
    listed = json.loads(mec(platform, "jobs", "list", "--limit", "1", "--json",
                            config=str(config)).stdout)
    assert listed["count"] >= 1
    unreachable = subprocess.run([sys.executable, "-m", "mec_client", "jobs", "list"],
                                 env=platform.env | {"MEC_API_URL": "http://127.0.0.1:9",
                                                     "MEC_API_KEY": "k"},
                                 capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 1 and "cannot reach the API" in unreachable.stderr


def test_cli__evaluate_a_finished_job_and_wait_for_its_result(platform):
    job = Client(platform.url, platform.key).submit(pretrain(4))
    platform.wait_status(job.id, ("succeeded",))
    done = mec(platform, "jobs", "evaluate", str(job.id), "--protocol", "knn",
               "--train-limit", "64", "--test-limit", "32", "--wait").stdout.splitlines()
    assert done[0].startswith("job ") and f"knn evaluation of job {job.id}" in done[0]
    evaluation = int(done[0].split()[1])
    finished = platform.get(f"/v1/jobs/{evaluation}")
    result = finished["result"]
    # its progress counted the images embedded (64 train + 32 test), not "step 0 of ?"
    assert (finished["progress"]["step"], finished["progress"]["total_steps"]) == (96, 96)
    assert done[-2] == f"job {evaluation} succeeded"
    assert done[-1] == f"top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} %"
    missing = mec(platform, "jobs", "evaluate", "999999", check=False)
    assert missing.returncode == 1 and "404: config.job_id: job 999999 not found" in \
        missing.stderr


def test_cli__login_finds_the_api_that_mec_up_left_running(platform, tmp_path):
    run = tmp_path / "stack" / "run"  # what `mec up` writes in its data directory
    run.mkdir(parents=True)
    (run / "api.pid").write_text(str(platform.api.pid))
    (run / "ports.json").write_text(json.dumps({"api": int(platform.url.rsplit(":", 1)[1])}))
    env = {k: v for k, v in platform.env.items() if k not in ("MEC_API_URL", "MEC_API_KEY")}
    done = subprocess.run([sys.executable, "-m", "mec_client", "login", "--key", platform.key],
                          env=env | {"MEC_DATA_DIR": str(tmp_path / "stack"),
                                     "MEC_CLIENT_CONFIG": str(tmp_path / "client.json")},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"logged in to {platform.url};")
    assert json.loads((tmp_path / "client.json").read_text())["url"] == platform.url


def test_cli__models_list_deploy_undeploy(platform):
    client = Client(platform.url, platform.key)
    job = client.wait(client.submit(pretrain(4)).id, timeout=240, poll=0.5)
    model = next(m for m in client.models().data if m.job_id == job.id)
    listed = json.loads(mec(platform, "models", "list", "--json").stdout)
    assert model.id in [m["id"] for m in listed["data"]]
    unknown = mec(platform, "models", "deploy", str(model.id), "--reference-dataset", "nope",
                  check=False)
    assert unknown.returncode == 1 and "422" in unknown.stderr and \
        "reference_dataset" in unknown.stderr, unknown.stderr
    deployed = mec(platform, "models", "deploy", str(model.id), "--workers", "1",
                   "--reference-split", "test", "--reference-limit", "120", "--wait")
    assert "succeeded" in deployed.stdout
    # the wait said how far the reference set's embedding was, ending with all of it: the
    # first 120 test images asked for
    embedded = re.findall(r"^job \d+ \w+ (\d+)/(\d+) reference images ready \(",
                          deployed.stdout, re.MULTILINE)
    assert embedded and embedded[-1] == ("120", "120"), deployed.stdout
    assert client.model(model.id).deployment["status"] == "serving"
    assert "serving" in mec(platform, "models", "list").stdout
    undeployed = json.loads(mec(platform, "models", "undeploy", str(model.id), "--wait",
                                "--json").stdout)
    assert undeployed["status"] == "succeeded"
    # after an evaluation of the same train images, a deploy says it reused its features
    evaluation = client.wait(client.submit({"kind": "evaluate", "config": {
        "job_id": job.id, "test_limit": 50}}).id, timeout=240, poll=0.5)
    assert evaluation.status == "succeeded", evaluation.error
    again = mec(platform, "models", "deploy", str(model.id), "--workers", "1", "--wait")
    assert f"its reference set reused evaluation job {evaluation.id}'s features" in \
        again.stdout, again.stdout
    assert "embedded" not in again.stdout, again.stdout  # its progress: images ready
