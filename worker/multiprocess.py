"""A pretraining job trained by several processes (`config.processes`).

The worker that claimed the job launches `torchrun` for that many ranks on this host and
watches them; it keeps the job's lease the whole time. Each rank runs mec_core's `train`
(DDP: NCCL on GPUs, gloo on CPUs); rank 0 writes metrics, progress and checkpoints to the
database as a one-process job does. The ranks learn of a cancel from the database (rank 0
polls and every rank stops at the same step), of a hand-over from a file the worker
writes on its warm shutdown, and of the worker's death from the kernel (the launcher gets
SIGTERM and takes the ranks down). Ranks that do not stop within `STOP_GRACE_SECONDS` of
being asked are killed.

Each rank leaves what it ended with in `<job>/ranks/rank-N.json`: rank 0 its result, any
rank its error. A rank that died leaves nothing: then the job goes back to the queue and
resumes from its last checkpoint (`RanksDied`).

    python -m worker.multiprocess JOB_ID OWNER     # one rank, as torchrun starts it
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO

import psutil

from mec_core.config import stored_config
from mec_core.train import Callbacks, TrainingDiverged, TrainResult, train
from mec_platform import datasets
from mec_platform.db import session_scope
from mec_platform.settings import get_settings
from mec_platform.tables import Job
from worker import job_store
from worker.callbacks import DatabaseCallbacks

STOP_GRACE_SECONDS = 20.0
_PR_SET_PDEATHSIG = 1
# torchrun's --tee prefix, and the one torch's exception hook puts on a rank's traceback
_RANK_PREFIX = re.compile(r"\[default(\d+)\]:(?:\[rank\d+\]: )?")
_log = logging.getLogger(__name__)
_log.setLevel(logging.INFO)  # the ranks' lines reach the job's log at any worker log level


class RanksFailed(RuntimeError):
    """A rank raised an error: running again would raise it again."""


class RanksDied(RuntimeError):
    """The ranks ended without a result (a rank was killed or crashed)."""


class _FileFlag:
    """Set when its file exists: the worker's hand-over request, as a rank sees it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def is_set(self) -> bool:
        return self.path.exists()


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM it when the worker process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_tree(pid: int) -> None:
    try:
        launcher = psutil.Process(pid)
        tree = launcher.children(recursive=True) + [launcher]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=10)


def _died(code: int, log: Path, errors: list[str]) -> RanksDied:
    """Torchrun's root cause, the rank that failed first ('rank : 1 (local_rank: 1)',
    'exitcode : -9 (pid: …)  (SIGKILL)'), else what a rank raised (a lost connection)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    root = max((i for i, line in enumerate(lines) if line.startswith("Root Cause")), default=None)
    fields = [[part.strip() for part in line.split(":", 1)]
              for line in lines[root:root + 10] if ":" in line] if root is not None else []
    cause = [f"{key}: {value}" for key, value in fields if key in ("rank", "exitcode")]
    said = "; ".join(cause or errors)
    return RanksDied(f"a training process died (torchrun exit code {code}"
                     f"{'; ' + said if said else ''}); log: {log}")


def launch(job_id: int, owner: str, processes: int, out: Path,
           shutting_down: threading.Event) -> tuple[TrainResult, bool]:
    """Train job `job_id` with `processes` ranks; returns rank 0's result and whether the
    job was cancelled, like a one-process run. Raises TrainingDiverged, RanksFailed or
    RanksDied."""
    ranks = out / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    for old in ranks.iterdir():
        old.unlink()
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # each line as it is written
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    log = out / "torchrun.log"
    code, killed, cancelled = supervise(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={processes}", "--max-restarts=0", "--tee=3",
         f"--log-dir={out / 'torchrun-logs'}",
         "-m", "worker.multiprocess", str(job_id), owner],
        env, log, _rank_source, (ranks / "handover").touch, job_id, owner, shutting_down)
    reports = sorted(ranks.glob("rank-*.json"), key=lambda p: p.stat().st_mtime)
    ended = {p.stem.replace("-", " "): json.loads(p.read_text()) for p in reports}
    if "result" in ended.get("rank 0", {}):
        return result_from(ended["rank 0"]["result"]), ended["rank 0"]["cancelled"]
    if killed:
        return stopped_result(job_id), cancelled
    if any("diverged" in done for done in ended.values()):
        raise TrainingDiverged(next(d["diverged"] for d in ended.values() if "diverged" in d))
    errors = [f"{name}: {done['error']}" for name, done in ended.items()]
    if len(errors) == processes:  # every rank raised: the first to raise is the cause
        raise RanksFailed(errors[0])
    # a rank died without a word: the others' errors (a broken connection) follow from it
    raise _died(code, log, errors[:1])


def supervise(command: list[str], env: dict[str, str], log: Path,
              source: Callable[[str], tuple[str, str]], hand_over: Callable[[], None],
              job_id: int, owner: str, shutting_down: threading.Event
              ) -> tuple[int, bool, bool]:
    """Run `command`, a launcher of ranks, until it ends; returns (its exit code, whether it
    was killed, whether the job was cancelled). Its output goes to `log` and, line by line,
    to the job's log (`source(line)` is the line's source and text). A hand-over is passed
    on once, by `hand_over()` (it raises the flag that rank 0 reads); asked to stop (a
    cancel, a hand-over, a lost lease), it is killed with its children when it has not
    ended within STOP_GRACE_SECONDS. It gets SIGTERM when the worker process dies."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent, text=True,
                            errors="replace")
    reader = threading.Thread(target=_relay, args=(proc.stdout, log, job_id, source),
                              daemon=True)
    reader.start()
    watch = DatabaseCallbacks(job_id, owner, get_settings().cancel_poll_seconds)
    asked_at, killed = None, False
    while proc.poll() is None:
        time.sleep(0.2)
        if asked_at is None and (shutting_down.is_set() or watch.should_stop(0)):
            asked_at = time.monotonic()
            if shutting_down.is_set():
                hand_over()
        if asked_at is not None and time.monotonic() - asked_at > STOP_GRACE_SECONDS:
            _kill_tree(proc.pid)
            killed = True
    reader.join(timeout=10)
    return proc.returncode, killed, watch.cancelled


def result_as_json(result: TrainResult) -> dict:
    return asdict(result) | {"checkpoint": result.checkpoint and str(result.checkpoint)}


def result_from(saved: dict) -> TrainResult:
    """The TrainResult that `result_as_json` wrote."""
    return TrainResult(**saved | {"checkpoint": saved["checkpoint"] and Path(saved["checkpoint"])})


def stopped_result(job_id: int) -> TrainResult:
    """The result of ranks killed when they did not stop in time: stopped, at the last
    step the job recorded."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        return TrainResult(job.step, job.total_steps or 0, True, None, 0.0)


def _rank_source(line: str) -> tuple[str, str]:
    """A rank's line (torchrun's --tee prefixes it with '[default<rank>]:') as that
    rank's, unprefixed; any other as torchrun's."""
    rank = _RANK_PREFIX.match(line)
    return (f"rank {rank[1]}", line[rank.end():]) if rank else ("torchrun", line)


def _relay(lines: IO[str], log: Path, job_id: int,
           source: Callable[[str], tuple[str, str]]) -> None:
    """Copy a launcher's output to `log` and, line by line, to the job's log."""
    with log.open("a") as sink:
        for line in lines:
            sink.write(line)
            sink.flush()
            name, text = source(line)
            _log.info("%s", text.rstrip("\n"), extra={"job_id": job_id, "source": name})


def _write(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def main(job_id: int, owner: str) -> None:
    """One rank of job `job_id` (torchrun gives RANK); the job's config from the database."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    with session_scope() as s:  # a dataset:// version: the folder the launcher unpacked
        job = s.get(Job, job_id)
        config = stored_config(job.config)
        config = config.model_copy(update={"data_dir": datasets.local_dir(
            s, job.project, config.data_dir)})
    out = job_store.folder(job_id)
    rank = int(os.environ["RANK"])
    report = out / "ranks" / f"rank-{rank}.json"
    callbacks = DatabaseCallbacks(job_id, owner, settings.cancel_poll_seconds,
                                  _FileFlag(out / "ranks" / "handover")) \
        if rank == 0 else Callbacks()  # every rank stops at the step rank 0 stops at
    try:
        result = train(config, out, callbacks, resume=True)
    except TrainingDiverged as exc:
        _write(report, {"diverged": str(exc)})
        raise
    except Exception as exc:
        _write(report, {"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        if rank == 0:
            callbacks.close()
    if rank == 0:
        _write(report, {"result": result_as_json(result), "cancelled": callbacks.cancelled})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
