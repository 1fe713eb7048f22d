"""Pretraining jobs of 2 gloo processes (config.processes) through the real API and Celery
worker, which launches torchrun: the loss curve is the 1-process one with the same global
batch; kill -9 of one rank re-queues the job, which resumes from its checkpoint; a cancel
stops every rank within seconds; SIGTERM of the worker hands the job over with a
checkpoint; kill -9 of the worker takes its ranks down; a job needing more processes
than any worker runs stays queued, saying why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

# A small learning rate: the two reduction orders then agree to rounding, float32's or
# bf16's (tests/mec_core/test_train.py shows the same for torchrun by hand, and measures bf16's)
TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "log_every": 2,
        "checkpoint_every": 10, "warmup_epochs": 0.2, "lambda_warmup_epochs": 0.2,
        "base_lr": 0.01, "precision": "fp32", "monitor_every": 0}


def pretrain(platform, steps, processes, **extra):
    config = TINY | {"max_steps": steps, "epochs": steps // 8 + 1, "processes": processes}
    return platform.post("/v1/jobs", {"kind": "pretrain", "name": f"ranks-{processes}",
                                      "queue": "gpu", "config": config | extra})


def _losses(platform, job_id):
    series = platform.get(f"/v1/jobs/{job_id}/metrics", params={"name": ["loss"]})
    return series["series"]["loss"]


def _ranks(platform, worker: str) -> dict[int, psutil.Process]:
    """The training processes under `worker`, by rank (the launcher is not one)."""
    def found():
        ranks = {}
        for p in psutil.Process(platform.workers[worker].pid).children(recursive=True):
            try:
                line = " ".join(p.cmdline())
                if "worker.multiprocess" in line and "torch.distributed.run" not in line:
                    ranks[int(p.environ()["RANK"])] = p
            except (psutil.NoSuchProcess, KeyError):
                continue
        return ranks if len(ranks) == 2 else None
    return platform.wait_for(found, 30, f"the 2 ranks under {worker}")


def _gone(processes) -> bool:
    def dead(p):
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return all(dead(p) for p in processes)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("bf16", 4e-3)])
@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_two_processes_follow_the_one_process_losses(platform, precision, tolerance):
    one, two = (pretrain(platform, 8, n, log_every=1, precision=precision) for n in (1, 2))
    for job in (one, two):
        done = platform.wait_status(job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
    a, b = _losses(platform, one["id"]), _losses(platform, two["id"])
    assert a["steps"] == b["steps"] == list(range(1, 9))
    for x, y in zip(a["values"], b["values"]):
        assert y == pytest.approx(x, abs=tolerance)
    models = {m["job_id"] for m in platform.get("/v1/models")["data"]}
    assert two["id"] in models  # rank 0's checkpoint became a model
    lines = platform.get(f"/v1/jobs/{two['id']}/logs")["lines"]
    said = {(line["source"], line["line"].split(":")[0]) for line in lines}
    for rank in (0, 1):  # each rank's own trainer line, under its name
        assert any(line["source"] == f"rank {rank}" and
                   line["line"].startswith(f"INFO mec_core.train: rank {rank} of 2 on cpu")
                   for line in lines), said
    assert lines[-1]["line"] == f"INFO worker.tasks: job {two['id']}: succeeded"


@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_an_error_every_rank_raises_fails_the_job_with_it(platform):
    job = pretrain(platform, 8, 2, train_limit=16)  # fewer images than one batch
    done = platform.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"].startswith("rank ") and \
        "ValueError: batch_size 32 exceeds the 16 training images" in done["error"]
    lines = platform.get(f"/v1/jobs/{job['id']}/logs")["lines"]
    for rank in ("rank 0", "rank 1"):  # each rank's traceback, under its name
        told = [line["line"] for line in lines if line["source"] == rank]
        assert "Traceback (most recent call last):" in told, lines
        assert any(t.startswith("ValueError: batch_size 32 exceeds") for t in told)


@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_kill_9_of_one_rank_requeues_the_job_and_it_resumes(platform):
    job = pretrain(platform, 80, 2, log_every=5)
    runner = platform.runner_of(job["id"], past_step=25)
    ranks = _ranks(platform, runner)
    ranks[1].kill()
    requeued = platform.wait_for(
        lambda: (j := platform.get(f"/v1/jobs/{job['id']}"))["attempts"] == 2 and j, 60,
        "the job to be claimed again")
    assert _gone(ranks.values())  # torchrun took the other rank down
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["error"] is None and requeued["resumes"] == 1
    assert "exitcode: -9" in requeued["error"] and "re-queued" in requeued["error"], \
        requeued["error"]  # kept while the resumed run trains
    assert _losses(platform, job["id"])["steps"] == list(range(1, 81))


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_cancel_stops_every_rank_within_seconds(platform):
    job = pretrain(platform, 4000, 2)
    runner = platform.runner_of(job["id"], past_step=4)
    ranks = _ranks(platform, runner)
    launcher = psutil.Process(platform.workers[runner].pid).children()[0]
    asked = time.monotonic()
    platform.post(f"/v1/jobs/{job['id']}/cancel", expect=200)
    done = platform.wait_status(job["id"], ("cancelled", "succeeded", "failed"), timeout=30)
    assert done["status"] == "cancelled"
    platform.wait_for(lambda: _gone([*ranks.values(), launcher]), 10, "every rank to exit")
    assert time.monotonic() - asked < 15
    assert 4 <= done["result"]["steps"] < 4000 and done["checkpoint"]


@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_sigterm_hands_a_multi_process_job_over_with_a_checkpoint(platform):
    platform.start_worker("w-ranks")
    job = pretrain(platform, 100, 2, checkpoint_every=1000)
    runner = platform.runner_of(job["id"], past_step=6)
    ranks = _ranks(platform, runner)
    proc = platform.workers[runner]
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(60)  # the ranks stop at the next step, checkpoint, and the worker exits
    assert _gone(ranks.values())
    handed = platform.get(f"/v1/jobs/{job['id']}")
    assert handed["checkpoint"] and "step_00000100" not in handed["checkpoint"]
    platform.start_worker(runner)
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert _losses(platform, job["id"])["steps"] == list(range(1, 101))


@pytest.mark.slow  # about a minute; the default suite kills one rank and SIGTERMs a worker
@pytest.mark.parametrize("shared_platform", ["postgres+redis"], indirect=True)
def test_a_killed_worker_takes_its_ranks_down_and_the_job_resumes_elsewhere(platform):
    platform.start_worker("w-spare")
    job = pretrain(platform, 100, 2, checkpoint_every=20)
    runner = platform.runner_of(job["id"], past_step=25)
    ranks = _ranks(platform, runner)
    os.killpg(platform.workers[runner].pid, signal.SIGKILL)
    platform.wait_for(lambda: _gone(ranks.values()), 40, "the dead worker's ranks to exit")
    done = platform.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["checkpoint"].endswith("step_00000100.pt")
    assert _losses(platform, job["id"])["steps"] == list(range(1, 101))
    platform.start_worker(runner)


@pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True)
def test_a_job_needing_more_processes_than_any_worker_stays_queued_saying_why(platform):
    assert {w["processes"] for w in platform.get("/v1/workers")} == {2}
    job = pretrain(platform, 8, 4)
    why = "needs 4 processes; the largest live worker on queue 'gpu' runs 2"
    assert why in job["waiting"]
    time.sleep(3)  # the worker has had the message, and left the job queued
    waiting = platform.get(f"/v1/jobs/{job['id']}")
    assert waiting["status"] == "queued" and why in waiting["waiting"]
    assert why in platform.get("/v1/jobs", params={"status": "queued"})["data"][0]["waiting"]
    shown = subprocess.run([sys.executable, "-m", "mec_client", "jobs", "show", str(job["id"])],
                           env=platform.env | {"MEC_API_URL": platform.url, "COLUMNS": "300",
                                               "MEC_API_KEY": platform.key},
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "waiting" in shown and why in " ".join(shown.split())
    platform.post(f"/v1/jobs/{job['id']}/cancel", expect=200)
    assert platform.get(f"/v1/jobs/{job['id']}")["waiting"] is None
