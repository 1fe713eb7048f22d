"""A pretraining job trained on several nodes (`config.nodes` > 1): a Ray Train run on the
cluster at MEC_RAY_ADDRESS.

The worker that claimed the job starts the run's driver (`python -m worker.ray_run JOB_ID
OWNER`) and watches it as it watches torchrun (`multiprocess.supervise`): it keeps the
job's lease, copies the run's lines to the job's log, passes a cancel and a hand-over on,
and kills the driver when the ranks do not stop in time; the driver dies with the worker,
and Ray then ends the run's actors (they share their driver's fate).

The driver submits a TorchTrainer of nodes x processes Ray workers, reserved all at once
(one placement group: gang scheduling), one GPU each on GPU nodes, one CPU otherwise.
Ray sets up the process group (gloo, or NCCL on GPUs, with a PG_TIMEOUT_SECONDS timeout)
and each worker runs `_rank`: mec_core's `train` in its node's own folders, rank 0 writing
metrics and progress to the database and storing each checkpoint as a one-process job
does. The nodes, the driver and the worker share no disk, only the database and the store:
every rank resumes from the newest stored checkpoint, rank 0 leaves the run's outcome in
the store and reads the worker's hand-over flag there, and the worker brings the last
checkpoint from the store to export the model. When a rank, a Ray worker or a node is
lost, Ray restarts the whole group (FailureConfig, with the attempts the job has left);
`_Failures` counts each restart as an attempt and says which rank on which node failed
first. Checkpoints stay mec_core's own (Ray's would copy each one again).

    python -m worker.ray_run JOB_ID OWNER     # the driver, as the worker starts it
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import ray
import ray._private.state
import ray.train
import torch.distributed as dist
from ray.train import FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from sqlalchemy import update

from mec_core.config import TrainConfig, stored_config
from mec_core.train import Callbacks, TrainingDiverged, TrainResult, train
from mec_platform import datasets, storage
from mec_platform.db import retrying, session_scope
from mec_platform.settings import get_settings
from mec_platform.storage import StorageError
from mec_platform.tables import Job
from worker import job_store
from worker.callbacks import DatabaseCallbacks
from worker.multiprocess import (
    RanksDied,
    RanksFailed,
    result_as_json,
    result_from,
    stopped_result,
    supervise,
)

# How long a collective waits for a rank that stopped answering, in seconds (torch's
# default is 30 minutes). Ray finds a lost node or process by itself within seconds; this
# bounds a rank that hangs while its process lives on.
PG_TIMEOUT_SECONDS = 120
WAITING_POLL_SECONDS = 2.0
# the worker's folders, which a node's processes take unless their node sets its own
HOST_FOLDERS = {"MEC_DATA_DIR": "data_dir", "MEC_ARTIFACT_ROOT": "artifact_root",
                "MEC_CACHE_DIR": "cache_dir"}
_log = logging.getLogger(__name__)
_log.setLevel(logging.INFO)  # the run's lines reach the job's log at any worker log level


def launch(job_id: int, owner: str, out: Path,
           shutting_down: threading.Event) -> tuple[TrainResult, bool]:
    """Train job `job_id` on the Ray cluster; returns rank 0's result (its last checkpoint
    brought from the store to this host) and whether the job was cancelled, like a
    one-process run. Raises TrainingDiverged, RanksFailed (every try failed with an error of
    the training code) or RanksDied (ranks were lost more often than the job's attempts
    allow, or the driver ended without an outcome)."""
    run = out / "ray"
    run.mkdir(parents=True, exist_ok=True)
    store = storage.get_store()
    for name in ("outcome.json", "handover"):
        store.delete(_key(job_id, name))
    code, killed, cancelled = supervise(
        [sys.executable, "-m", "worker.ray_run", str(job_id), owner],
        # each line as it is written, without colours, every rank's (not deduplicated)
        dict(os.environ, PYTHONUNBUFFERED="1", RAY_COLOR_PREFIX="0", RAY_DEDUP_LOGS="0"),
        run / "driver.log", lambda line: ("ray", line),
        lambda: storage.put_bytes(_key(job_id, "handover"), b""), job_id, owner, shutting_down)
    outcome = _outcome(job_id)
    if "result" in outcome:
        result = result_from(outcome["result"])
        if result.checkpoint is not None:  # written on rank 0's node
            result = replace(result, checkpoint=job_store.fetch_newest(job_id))
        return result, outcome["cancelled"]
    if killed:
        return stopped_result(job_id), cancelled
    if "diverged" in outcome:
        raise TrainingDiverged(outcome["diverged"])
    if outcome.get("raised"):
        raise RanksFailed(outcome["error"])
    raise RanksDied(outcome.get("error") or f"the Ray driver exited with code {code} "
                    f"without an outcome; log: {run / 'driver.log'}")


def _key(job_id: int, name: str) -> str:
    """The store's key of the run's outcome or hand-over flag."""
    return f"jobs/{job_id}/ray/{name}"


def _write_outcome(job_id: int, value: dict) -> None:
    storage.put_bytes(_key(job_id, "outcome.json"), json.dumps(value).encode())


def _outcome(job_id: int) -> dict:
    """What rank 0 or the driver left ({} if neither did)."""
    try:
        return json.loads(storage.read_bytes(_key(job_id, "outcome.json")))
    except StorageError:
        return {}


class _StoreFlag:
    """The worker's hand-over request as rank 0 sees it: set once the flag is in the
    store, looked for at most every `poll_seconds` (it is asked at every step)."""

    def __init__(self, key: str, poll_seconds: float) -> None:
        self.key, self.poll_seconds = key, poll_seconds
        self.last, self.set = 0.0, False

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self.set and now - self.last >= self.poll_seconds:
            self.last = now
            self.set = storage.get_store().stat(self.key) is not None
        return self.set


def _placement(job_id: int, placement: dict) -> None:
    def write() -> None:
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(placement=placement))
    retrying(write)


def _slots(config: TrainConfig, state: str, hosts: list[tuple[str, str]] | None = None
           ) -> list[dict]:
    """One slot per node, numbered in the order of their lowest rank: its ranks, and its
    host once placed (`hosts`: each rank's Ray node id and host name; Ray Train's own node
    rank goes by IP address, which the nodes of one machine share)."""
    if not hosts:
        p = config.processes
        return [{"node": n, "host": None, "ranks": list(range(n * p, (n + 1) * p)),
                 "state": state} for n in range(config.nodes)]
    nodes = list(dict.fromkeys(node for node, _ in hosts))
    return [{"node": n, "host": next(h for i, h in hosts if i == node),
             "ranks": [r for r, (i, _) in enumerate(hosts) if i == node], "state": state}
            for n, node in enumerate(nodes)]


def lacking(config: TrainConfig, gpu: bool, free: list[dict[str, float]]) -> str | None:
    """What a cluster whose nodes have `free` resources lacks to place the run, or None
    ('needs 2 nodes with 1 GPU each; the cluster has 1 free')."""
    unit = "GPU" if gpu else "CPU"
    enough = sum(1 for node in free if node.get(unit, 0) >= config.processes)
    if enough >= config.nodes:
        return None
    each = f"{config.processes} {unit}{'s' if config.processes > 1 else ''} each"
    return f"needs {config.nodes} nodes with {each}; the cluster has {enough} free"


def _watch_waiting(job_id: int, config: TrainConfig, gpu: bool, done: threading.Event) -> None:
    """Until rank 0 places the run: record what the cluster lacks (the job's `waiting`)."""
    said = None
    while not done.wait(WAITING_POLL_SECONDS):
        # per node; Ray's public state API needs the dashboard, which clusters may leave off
        free = list(ray._private.state.available_resources_per_node().values())
        reason = lacking(config, gpu, free)
        with session_scope() as s:
            if (s.get(Job, job_id).placement or {}).get("slots", [{}])[0].get("host"):
                return
        if reason != said:
            said = reason
            _placement(job_id, {"slots": _slots(config, "pending"), "waiting": reason})


class _Failures(UserCallback):
    """On Ray's controller, when ranks raised or were lost: the job's error names the
    rank that failed first and its node, and the restart that follows counts as an
    attempt (while the job has attempts left: the last failure ends the run)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        max_attempts = get_settings().max_attempts
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            slots = (job.placement or {}).get("slots", [])
            said = describe(worker_exceptions, slots)
            last = job.attempts >= max_attempts
            s.execute(update(Job).where(Job.id == self.job_id).values(
                attempts=Job.attempts + (0 if last else 1),
                placement={"slots": [slot | ({"state": "failed"} if set(slot["ranks"]) &
                                             set(worker_exceptions) else {})
                                     for slot in slots]},
                error=said + ("" if last else "; the run restarts from its last checkpoint "
                              f"(attempt {job.attempts + 1} of {max_attempts})")))
        print(f"job {self.job_id}: {said}", flush=True)


def _cause(exc: Exception) -> Exception:
    """A failed health check's own cause (Ray Train wraps a lost worker's error in one)."""
    return getattr(exc, "health_check_failure", None) or exc


def _lost(exc: Exception) -> bool:
    """The error of a rank whose process or node went away (not one its code raised)."""
    return isinstance(_cause(exc), ray.exceptions.RayActorError)


def describe(failures: dict[int, Exception], slots: list[dict]) -> str:
    """'rank 1 (node 1, host h) failed first: …': a lost rank before those that raised
    (their errors follow from the loss), then the lowest rank."""
    rank = min(failures, key=lambda r: (not _lost(failures[r]), r))
    slot = next((s for s in slots if rank in s["ranks"]), {})
    error = _cause(failures[rank])
    text = str(error).strip().splitlines()
    return (f"rank {rank} (node {slot.get('node', '?')}, host {slot.get('host') or '?'}) "
            f"{'was lost' if _lost(error) else 'failed'} first: {type(error).__name__}: "
            f"{text[0] if text else ''}")


def _rank(args: dict) -> None:
    """One Ray Train worker: rank `get_world_rank()` of the job, in the process group Ray
    set up (RANK, WORLD_SIZE and LOCAL_RANK set, which mec_core.distributed reads), in its
    node's folders (the worker's where the node's environment names none of HOST_FOLDERS:
    those of a node on the worker's own host, or on a disk mounted at the same paths)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not HOST_FOLDERS.keys() & os.environ.keys():  # the node sets none of its own
        os.environ.update(args["folders"])
    get_settings.cache_clear()  # read with the node's folders
    job_id, owner = args["job_id"], args["owner"]
    settings = get_settings()
    with session_scope() as s:  # a dataset:// version: unpacked into this node's cache
        job = s.get(Job, job_id)
        config = stored_config(job.config)
        config = config.model_copy(update={"data_dir": datasets.local_dir(
            s, job.project, config.data_dir)})
    job_store.fetch_stored(job_id)  # every rank resumes from the same step
    out = job_store.folder(job_id)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    hosts: list = [None] * context.get_world_size()
    dist.all_gather_object(hosts, (ray.get_runtime_context().get_node_id(),
                                   socket.gethostname()))
    if rank == 0:
        _placement(job_id, {"slots": _slots(config, "running", hosts)})
    callbacks = DatabaseCallbacks(job_id, owner, settings.cancel_poll_seconds, _StoreFlag(
        _key(job_id, "handover"), settings.cancel_poll_seconds)) \
        if rank == 0 else Callbacks()  # every rank stops at the step rank 0 stops at
    try:
        result = train(config, out, callbacks, resume=True)
    except TrainingDiverged as exc:  # every rank sees the same loss: a restart would too
        if rank == 0:
            _write_outcome(job_id, {"diverged": str(exc)})
        return
    finally:
        if rank == 0:
            callbacks.close()
    dist.barrier()  # rank 0 stored its last checkpoint: the nodes' copies can go
    job_store.clear(job_id, "checkpoints")
    dist.barrier()
    if rank == 0:  # the worker brings the checkpoint back from the store
        _write_outcome(job_id, {"result": result_as_json(result),
                                "cancelled": callbacks.cancelled})


def _environment() -> dict[str, str]:
    """What the run's processes need of the worker's environment: its settings (the
    database and the store above all, as this worker resolved them), the store's AWS_
    credentials and its thread count; not its folders, which are this host's
    (`HOST_FOLDERS`)."""
    settings = get_settings()
    return {k: v for k, v in os.environ.items() if (k.startswith(("MEC_", "AWS_")) or
            k == "OMP_NUM_THREADS") and k not in HOST_FOLDERS} | {
        "MEC_DATABASE_URL": settings.database_url, "MEC_STORAGE_URL": settings.storage_url}


def main(job_id: int, owner: str) -> None:
    """The run's driver: submit the job's Ray Train run, wait for it, leave its outcome in
    `<job>/ray/outcome.json` (rank 0's result, a divergence, or the error that ended it)."""
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, job_id)
        config, attempts = stored_config(job.config), job.attempts
    out = job_store.folder(job_id)
    ray.init(address=settings.ray_address, runtime_env={"env_vars": _environment()},
             logging_level=logging.WARNING)
    gpu = config.device.startswith("cuda") or (
        config.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    _placement(job_id, {"slots": _slots(config, "pending")})
    placed = threading.Event()
    threading.Thread(target=_watch_waiting, args=(job_id, config, gpu, placed),
                     daemon=True).start()
    trainer = TorchTrainer(
        _rank, train_loop_config={"job_id": job_id, "owner": owner, "folders": {
            name: str(getattr(settings, field)) for name, field in HOST_FOLDERS.items()}},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo",
                                 timeout_s=PG_TIMEOUT_SECONDS),
        # one rank per node needs distinct nodes; more fill node after node
        scaling_config=ScalingConfig(
            num_workers=config.world_size, use_gpu=gpu,
            placement_strategy="STRICT_SPREAD" if config.processes == 1 else "PACK"),
        run_config=RunConfig(
            name=f"job-{job_id}-attempt-{attempts}", storage_path=str(out / "ray"),
            failure_config=FailureConfig(max_failures=max(settings.max_attempts - attempts, 0)),
            callbacks=[_Failures(job_id)]))
    try:
        trainer.fit()  # rank 0 wrote the outcome
    except ray.train.WorkerGroupError as exc:
        with session_scope() as s:
            slots = (s.get(Job, job_id).placement or {}).get("slots", [])
        failures = exc.worker_failures
        _write_outcome(job_id, {"error": describe(failures, slots),
                                "raised": not any(_lost(e) for e in failures.values())})
    except ray.train.TrainingFailedError as exc:
        _write_outcome(job_id, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        placed.set()
    _finish_slots(job_id, _outcome(job_id))


def _finish_slots(job_id: int, outcome: dict) -> None:
    """The slots' last state: finished, stopped (a cancel or hand-over), or failed."""
    stopped = "result" in outcome and outcome["result"]["stopped"]
    state = "failed" if "result" not in outcome else "stopped" if stopped else "finished"
    with session_scope() as s:
        placement = s.get(Job, job_id).placement or {}
    _placement(job_id, {"slots": [slot | {"state": state}
                                  for slot in placement.get("slots", [])]})


if __name__ == "__main__":  # through the module's own name: Ray pickles `_rank` by reference
    from worker import ray_run
    ray_run.main(int(sys.argv[1]), sys.argv[2])
