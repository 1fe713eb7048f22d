"""Task functions called directly, in this process, on the embedded database: the
claim-run-end pattern of worker/tasks.py without a Celery worker in between. The real
worker processes are tested in tests/integration."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
from sqlalchemy import func, select

from mec_core.kept_features import Kept
from mec_core.train import StepMetrics
from mec_platform import joblogs, jobs, storage
from mec_platform.db import session_scope
from mec_platform.jobs import JobKind
from mec_platform.queue import Queue, app
from mec_platform.settings import get_settings
from mec_platform.tables import Evaluation, Job, Metric, Model
from worker import kept, tasks
from worker.callbacks import DatabaseCallbacks
from worker.process import shutting_down

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "pred_hidden_dim": 16, "train_limit": 64, "max_steps": 3, "monitor_every": 0,
        "log_every": 1}


def _submit(kind: JobKind, config: dict) -> int:
    with session_scope() as s:
        return jobs.submit(s, kind, config, Queue.CPU).id


def _job(job_id: int) -> Job:
    with session_scope() as s:
        return s.get(Job, job_id)


@pytest.fixture
def pretrained(embedded) -> int:
    job_id = _submit(JobKind.PRETRAIN, TINY)
    tasks.pretrain(job_id)
    return job_id


def test_pretrain__succeeds_with_metrics_and_a_model(pretrained):
    job = _job(pretrained)
    assert job.status == "succeeded", job.error
    assert job.result["steps"] == 3 and job.lease_owner is None and job.attempts == 1
    with session_scope() as s:
        model = s.scalar(select(Model).where(Model.job_id == pretrained))
        steps = s.scalars(select(Metric.step).where(Metric.job_id == pretrained,
                                                    Metric.name == "loss")).all()
    assert sorted(steps) == [1, 2, 3]
    assert model is not None and model.dataset == "synthetic"
    assert set(model.artifacts) >= {"checkpoint", "backbone", "encoder", "meta"}


def test_a_second_delivery_does_nothing(pretrained):
    tasks.pretrain(pretrained)  # the job is no longer queued: the claim fails
    assert _job(pretrained).attempts == 1
    with session_scope() as s:
        assert s.scalar(select(func.count(Model.id)).where(Model.job_id == pretrained)) == 1


def test_evaluate__records_an_evaluation(pretrained):
    job_id = _submit(JobKind.EVALUATE, {"job_id": pretrained, "protocol": "knn", "k": 5,
                                        "train_limit": 64, "test_limit": 32})
    tasks.evaluate_job(job_id)
    job = _job(job_id)
    assert job.status == "succeeded", job.error
    with session_scope() as s:
        evaluation = s.scalar(select(Evaluation).where(Evaluation.job_id == job_id))
    assert evaluation.top1 == job.result["top1"] and 0 <= evaluation.top1 <= 100


def test_evaluate__a_folder_its_job_stored_beside_a_built_in_dataset_is_not_read(pretrained):
    """A job row written when a data_dir given with synthetic was ignored: its evaluation
    reads the generated set, as the run did, and does not fail on the folder."""
    with session_scope() as s:
        job = s.get(Job, pretrained)
        job.config = job.config | {"data_dir": "/data/synthetic"}
    job_id = _submit(JobKind.EVALUATE, {"job_id": pretrained, "train_limit": 64,
                                        "test_limit": 32})
    tasks.evaluate_job(job_id)
    assert _job(job_id).status == "succeeded", _job(job_id).error


def _kept(model_id: int) -> list[Kept]:
    """The model's files of kept features in the store."""
    store = storage.get_store()
    return [Kept.read(storage.local_file(store.ref(key)))
            for key in store.keys(kept.folder(model_id))]


def test_evaluate__keeps_its_train_features_for_the_deploys_unless_told_not_to(
        pretrained, monkeypatch):
    def evaluation(train_limit: int) -> int:
        job_id = _submit(JobKind.EVALUATE, {"job_id": pretrained, "train_limit": train_limit,
                                            "test_limit": 16})
        tasks.evaluate_job(job_id)
        assert _job(job_id).status == "succeeded", _job(job_id).error
        return job_id

    with session_scope() as s:
        model_id = s.scalar(select(Model.id).where(Model.job_id == pretrained))
    old_name = storage.get_store().folder(f"features/mec-{model_id}.npz")  # a file:// store
    old_name.parent.mkdir(parents=True, exist_ok=True)
    old_name.write_bytes(b"the file as it was named until 2026-12-06")
    first = evaluation(48)
    assert not old_name.exists()
    (found,) = _kept(model_id)
    assert found.job_id == first and found.features.shape[0] == 48
    assert kept.finder(model_id)(found.fingerprint).job_id == first  # a deploy finds it
    assert kept.finder(model_id)(found.fingerprint[::-1]) is None  # other images: nothing
    second = evaluation(40)  # other images: their file replaces the first's
    (replaced,) = _kept(model_id)
    assert replaced.job_id == second and replaced.features.shape[0] == 40
    monkeypatch.setattr(get_settings(), "keep_evaluation_features", False)
    evaluation(48)
    assert [k.job_id for k in _kept(model_id)] == [second]  # kept nothing, replaced nothing
    assert kept.finder(model_id) is None  # deploys embed, with no lookup


def _cancel_at_first_progress(monkeypatch) -> list[tuple[int, int]]:
    """A user's cancel arriving while the job's work runs: at its first progress report
    (then the real report, which reads the flag). Returns the reports seen."""
    seen, report = [], tasks._progress

    def cancelled_then_report(job_id: int, done: int, total: int) -> None:
        seen.append((done, total))
        with session_scope() as s:
            assert jobs.cancel(s, job_id) == "running"
        report(job_id, done, total)
    monkeypatch.setattr(tasks, "_progress", cancelled_then_report)
    return seen


def test_evaluate__a_cancel_stops_it_at_its_next_batch_with_nothing_recorded(
        pretrained, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    with session_scope() as s:
        model_id = s.scalar(select(Model.id).where(Model.job_id == pretrained))
    seen = _cancel_at_first_progress(monkeypatch)
    job_id = _submit(JobKind.EVALUATE, {"job_id": pretrained, "train_limit": 48,
                                        "test_limit": 16})
    tasks.evaluate_job(job_id)
    job = _job(job_id)
    assert job.status == "cancelled" and job.finished_at is not None, job.error
    assert seen == [(48, 64)]  # after the train images; the test images never embedded
    assert (job.step, job.total_steps) == (48, 64)
    with session_scope() as s:
        assert s.scalar(select(Evaluation).where(Evaluation.job_id == job_id)) is None
    assert _kept(model_id) == []  # an evaluation without a result keeps nothing
    assert [line for _, _, line in _log_lines(job_id)][-2:] == [
        f"INFO worker.tasks: job {job_id}: cancelled at 48 of 64",
        f"INFO worker.tasks: job {job_id}: cancelled"]


def test_evaluate__a_cancel_after_its_embedding_finds_it_finishing_and_says_so(
        pretrained, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    keep = kept.keep

    def cancelled_then_keep(*args) -> None:  # the evaluation has its result: too late
        with session_scope() as s:
            assert jobs.cancel(s, job_id) == "running"
        keep(*args)
    monkeypatch.setattr(kept, "keep", cancelled_then_keep)
    job_id = _submit(JobKind.EVALUATE, {"job_id": pretrained, "train_limit": 48,
                                        "test_limit": 16})
    tasks.evaluate_job(job_id)
    job = _job(job_id)
    assert job.status == "succeeded" and job.cancel_requested, job.error
    assert [line for _, _, line in _log_lines(job_id)][-2:] == [
        f"INFO worker.tasks: job {job_id}: the cancel came after its work was done; it "
        "succeeds",
        f"INFO worker.tasks: job {job_id}: succeeded"]


def test_deploy__a_cancel_while_it_embeds_serves_nothing_and_leaves_nothing(
        pretrained, monkeypatch):
    from mec_platform import storage

    with session_scope() as s:
        model_id = s.scalar(select(Model.id).where(Model.job_id == pretrained))
    seen = _cancel_at_first_progress(monkeypatch)
    killed = get_settings().model_store / f".staging-mec-{model_id}-v7"  # left by a deploy
    killed.mkdir(parents=True)                                           # killed with -9
    (killed / "mec-1.mar").write_bytes(b"partial")
    job_id = _submit(JobKind.DEPLOY, {"model_id": model_id, "action": "deploy",
                                      "reference_limit": 40})
    tasks.deploy_job(job_id)
    job = _job(job_id)
    assert job.status == "cancelled", job.error
    assert seen and seen[0][1] == 40
    with session_scope() as s:
        assert s.get(Model, model_id).deployment is None
    settings = get_settings()
    assert not list(settings.model_store.glob(f".staging-mec-{model_id}-*"))
    assert not storage.work_folder(f"galleries/mec-{model_id}-v1.npy").exists()


def _deploy_behind_another(pretrained, monkeypatch, caplog, retry: bool = False
                           ) -> tuple[int, int, str, threading.Thread]:
    """Two deploys of one model, one running (claimed by another worker), the other
    started here in a thread: the later one, or with `retry` the earlier one (its worker
    was killed, the later one deploys meanwhile). Returns the running one's id, the
    waiting one's, the running one's owner and the thread, once the thread says it waits."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(tasks, "DEPLOY_WAIT_POLL_SECONDS", 0.05)
    with session_scope() as s:
        model_id = s.scalar(select(Model.id).where(Model.job_id == pretrained))
    spec = {"model_id": model_id, "action": "deploy", "reference_limit": 40}
    first, second = _submit(JobKind.DEPLOY, spec), _submit(JobKind.DEPLOY, spec)
    running, waiter = (second, first) if retry else (first, second)
    with session_scope() as s:
        assert jobs.claim(s, running, "another-worker", "host", "cpu", 60)
        if retry:
            assert tasks._deploy_turn(s, running) == ("go", None)  # it deploys
    thread = threading.Thread(target=tasks.deploy_job, args=(waiter,), daemon=True)
    thread.start()
    waiting = f"INFO worker.tasks: job {waiter}: waiting for job {running}, a deploy of " \
              "the same model, to finish"
    deadline = time.monotonic() + 30
    while waiting not in [line for *_, line in _log_lines(waiter)]:
        if time.monotonic() > deadline or not thread.is_alive():
            with session_scope() as s:
                jobs.cancel(s, waiter)
            pytest.fail(f"job {waiter} never said it waits: {_log_lines(waiter)}")
        time.sleep(0.05)
    return running, waiter, "another-worker", thread


def test_deploy__a_second_deploy_of_a_model_waits_for_the_first(pretrained, monkeypatch,
                                                                caplog):
    first, second, owner, thread = _deploy_behind_another(pretrained, monkeypatch, caplog)
    seen = _cancel_at_first_progress(monkeypatch)
    time.sleep(0.3)  # several looks at the first: still running, so nothing starts
    assert not seen and _job(second).status == "running" and _job(second).step == 0
    assert _job(second).placement == {"waiting": f"behind job {first}, a deploy of the "
                                                 "same model"}  # the job's `waiting`
    with session_scope() as s:
        assert jobs.finish(s, first, owner, "failed", error="stopped by the test")
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert seen and seen[0][1] == 40  # it embedded once the first had ended
    assert _job(second).status == "cancelled"


def test_deploy__a_retry_waits_for_a_later_deploy_under_way_and_is_superseded_by_it(
        pretrained, monkeypatch, caplog):
    """The first deploy's worker was killed; a later deploy of the model started meanwhile.
    The first one's retry waits for it, then, since it succeeded, does nothing."""
    later, retried, _, thread = _deploy_behind_another(pretrained, monkeypatch, caplog,
                                                       retry=True)
    with session_scope() as s:
        assert jobs.finish(s, later, "another-worker", "succeeded")
    thread.join(timeout=30)
    assert not thread.is_alive()
    job = _job(retried)
    why = f"superseded by job {later}, a deploy of the same model submitted after it"
    assert (job.status, job.error, job.step) == ("cancelled", why, 0)
    with session_scope() as s:
        assert s.get(Model, job.config["model_id"]).deployment is None  # the retry: nothing


def test_deploy__the_turn_is_decided_with_the_model_locked_also_on_sqlite(pretrained):
    """A later deploy decides to go while an earlier one's retry is being claimed: the
    retry's look waits for that decision (on SQLite too, where FOR UPDATE locks nothing),
    sees the later one deploying, and waits behind it instead of deploying beside it."""
    with session_scope() as s:
        model_id = s.scalar(select(Model.id).where(Model.job_id == pretrained))
    spec = {"model_id": model_id, "action": "deploy", "reference_limit": 40}
    retried, later = _submit(JobKind.DEPLOY, spec), _submit(JobKind.DEPLOY, spec)
    turns = {}

    def retry_looks() -> None:
        with session_scope() as s:
            assert jobs.claim(s, retried, "retrying-worker", "host", "cpu", 60)
            turns[retried] = tasks._deploy_turn(s, retried)
    with session_scope() as s:
        assert jobs.claim(s, later, "later-worker", "host", "cpu", 60)
    with session_scope() as s:
        turns[later] = tasks._deploy_turn(s, later)  # goes: its retry is not running yet
        thread = threading.Thread(target=retry_looks, daemon=True)
        thread.start()
        time.sleep(0.5)  # the retry's claim and look, while this transaction is open
    thread.join(timeout=30)
    assert turns == {later: ("go", None), retried: ("wait", later)}
    for job_id, owner in ((later, "later-worker"), (retried, "retrying-worker")):
        with session_scope() as s:
            jobs.finish(s, job_id, owner, "failed", error="stopped by the test")


def test_deploy__a_deploy_cancelled_while_it_waits_ends_without_starting(
        pretrained, monkeypatch, caplog):
    first, second, _, thread = _deploy_behind_another(pretrained, monkeypatch, caplog)
    with session_scope() as s:
        assert jobs.cancel(s, second) == "running"
    thread.join(timeout=30)
    assert not thread.is_alive()
    job = _job(second)
    assert job.status == "cancelled" and job.step == 0
    assert f"INFO worker.tasks: job {second}: cancelled at its start, behind job {first}" in \
        [line for *_, line in _log_lines(second)]
    assert _job(first).status == "running"


def test_failures_end_failed_with_the_reason(embedded):
    bad_data = _submit(JobKind.PRETRAIN, TINY | {"dataset": "imagefolder",
                                                 "data_dir": "/nonexistent/images"})
    tasks.pretrain(bad_data)
    job = _job(bad_data)
    assert job.status == "failed" and "/nonexistent/images" in job.error
    assert job.lease_owner is None and job.finished_at is not None

    no_model = _submit(JobKind.EVALUATE, {"job_id": bad_data})
    tasks.evaluate_job(no_model)
    job = _job(no_model)
    assert job.status == "failed"
    assert job.error == f"job {bad_data} has no finished model (it is failed)"


def test_a_cancelled_job_never_runs(embedded):
    job_id = _submit(JobKind.PRETRAIN, TINY)
    with session_scope() as s:
        jobs.cancel(s, job_id)
    tasks.pretrain(job_id)
    job = _job(job_id)
    assert job.status == "cancelled" and job.attempts == 0


def test_a_message_taken_during_shutdown_is_passed_on(embedded, held):
    job_id = _submit(JobKind.PRETRAIN, TINY)
    app.control.purge()  # as if this worker had taken the job's message
    assert job_id not in held()
    shutting_down.set()
    try:
        tasks.pretrain(job_id)
    finally:
        shutting_down.clear()
    assert _job(job_id).status == "queued" and _job(job_id).attempts == 0
    assert job_id in held()


def test_metrics_written_twice__the_retry_of_a_lost_commit_adds_nothing(embedded):
    """A metrics write whose commit went through but whose acknowledgement was lost (the
    database connection cut) is retried: the second write must neither fail nor add rows."""
    from mec_core.train import StepMetrics
    from worker.callbacks import DatabaseCallbacks

    job_id = _submit(JobKind.PRETRAIN, TINY)
    callbacks = DatabaseCallbacks(job_id, "owner", 1.0)
    records = [StepMetrics(step=s, epoch=0, values={"loss": -0.1 * s}) for s in (1, 2)]
    callbacks.on_metrics(records)
    callbacks.on_metrics(records)
    with session_scope() as s:
        steps = s.scalars(select(Metric.step).where(Metric.job_id == job_id)
                          .order_by(Metric.step)).all()
    assert steps == [1, 2]


def test_a_job_needing_more_processes_than_this_worker_runs_is_left_queued(embedded):
    from worker.device import process_capacity

    needs = process_capacity() + 1  # MEC_WORKER_PROCESSES unset: 1 here, without CUDA
    job_id = _submit(JobKind.PRETRAIN, TINY | {"batch_size": 32 * needs, "processes": needs})
    tasks.pretrain(job_id)
    job = _job(job_id)
    assert job.status == "queued" and job.attempts == 0 and job.lease_owner is None


@pytest.mark.parametrize(("stored_dir", "spec", "refused"), [
    ("/etc", {}, "the model's config.data_dir"),  # an uploaded checkpoint's config
    ("/etc", {"reference_data_dir": "/etc/ssl"}, "reference_data_dir: /etc/ssl is outside"),
    ("/etc", {"reference_data_dir": "{root}"}, None),  # the request's folder wins
    ("/etc", {"reference_dataset": "digits"}, None),  # another dataset: not the stored folder
    ("{root}", {}, None),
    (None, {}, None),
])
def test_deploy__the_reference_folder_obeys_the_path_rule_also_from_an_uploaded_config(
        embedded, tmp_path, stored_dir, spec, refused):
    import json

    from mec_platform.specs import DeploySpec

    root = embedded.allowed_data_roots[-1]
    meta = tmp_path / "model.json"
    meta.write_text(json.dumps({"config": {"dataset": "synthetic", "data_dir": stored_dir and
                                           stored_dir.format(root=root)}}))
    spec = DeploySpec(**{k: v.format(root=root) for k, v in spec.items()})
    if refused is None:
        tasks._check_reference_dir(spec, {"meta": str(meta)}, embedded.allowed_data_roots)
    else:
        with pytest.raises(tasks.JobFailed, match=refused):
            tasks._check_reference_dir(spec, {"meta": str(meta)}, embedded.allowed_data_roots)


def _log_lines(job_id: int) -> list[tuple[int, str, str]]:
    with session_scope() as s:
        return [(line.attempt, line.source, line.line) for line in joblogs.read(s, job_id)]


def test_logs__a_failed_job_keeps_its_traceback(embedded):
    job_id = _submit(JobKind.PRETRAIN, TINY | {"train_limit": 16})  # fewer than a batch
    tasks.pretrain(job_id)
    lines = _log_lines(job_id)
    text = [line for _, _, line in lines]
    assert "Traceback (most recent call last):" in text
    assert any("in setup" in line for line in text)  # the frames of the trainer
    assert text[-1] == (f"ERROR worker.tasks: job {job_id} failed: ValueError: batch_size "
                        "32 exceeds the 16 training images of synthetic (its train split less "
                        "the online kNN's held-out tenth, and train_limit): set batch_size to "
                        "at most 16")
    assert {(attempt, source) for attempt, source, _ in lines} == {(1, "worker")}


def test_logs__a_job_has_its_trainers_lines_and_its_end(embedded, caplog):
    caplog.set_level(logging.INFO)
    job_id = _submit(JobKind.PRETRAIN, TINY)
    tasks.pretrain(job_id)
    text = [line for _, _, line in _log_lines(job_id)]
    assert text[0].startswith(f"INFO worker.tasks: job {job_id}: attempt 1 on ")
    assert any(line.startswith("INFO mec_core.train: rank 0 of 1 on cpu: mec (convnet) on "
                               "synthetic, step 0 of 3") for line in text)
    assert any(line.startswith("INFO mec_core.train: finished: 3 steps") for line in text)
    assert text[-1] == f"INFO worker.tasks: job {job_id}: succeeded"


def test_claim__missing_data_fails_the_job_before_training_with_the_reason(embedded, tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    job_id = _submit(JobKind.PRETRAIN, TINY | {"dataset": "fashion-mnist",
                                               "data_dir": str(tmp_path / "fashion")})
    tasks.pretrain(job_id)
    job = _job(job_id)
    assert job.status == "failed" and job.error == (
        f"fashion-mnist: no such directory {tmp_path}/fashion; did you mean "
        f"{tmp_path}/fashion-mnist?")
    assert not any("training" in line for _, _, line in _log_lines(job_id))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host's worker has a GPU")
def test_a_job_asking_for_a_gpu_is_left_queued_by_a_worker_without_one(embedded):
    job_id = _submit(JobKind.PRETRAIN, TINY | {"device": "cuda"})
    tasks.pretrain(job_id)
    job = _job(job_id)
    assert job.status == "queued" and job.attempts == 0


def test_last_metrics__keep_the_monitors_values_between_its_runs(embedded):
    job_id = _submit(JobKind.PRETRAIN, TINY)
    callbacks = DatabaseCallbacks(job_id, "owner", 1.0)
    callbacks.on_metrics([StepMetrics(1, 0, {"loss": -1.0, "knn_top1": 70.0})])
    callbacks.on_metrics([StepMetrics(2, 0, {"loss": -2.0})])  # the monitor ran at step 1
    assert _job(job_id).last_metrics == {"loss": -2.0, "knn_top1": 70.0}
