"""`mec up` / `mec down`: the API, a worker and TorchServe as local processes, started by
module path (the launcher imports neither the API nor the worker).

Each process gets its own session (process group), a log file under data_dir/logs and a
pid file under data_dir/run, so `mec down` (or the demo's cleanup) stops exactly what
was started, children included.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from mec_platform.settings import Settings
from serving.torchserve import unused_ports


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on `port`."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


@dataclass
class Ports:
    api: int = 8000
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082

    @staticmethod
    def any_free() -> Ports:
        return Ports(*unused_ports(4))


class Stack:
    """The local platform of one data directory."""

    def __init__(self, data_dir: Path, ports: Ports) -> None:
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        self.env = os.environ | {
            "MEC_DATA_DIR": str(self.data_dir),
            "MEC_TORCHSERVE_INFERENCE_URL": f"http://127.0.0.1:{ports.inference}",
            "MEC_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{ports.management}",
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = Settings(data_dir=self.data_dir,
                                 torchserve_inference_url=self.env["MEC_TORCHSERVE_INFERENCE_URL"],
                                 torchserve_management_url=self.env["MEC_TORCHSERVE_MANAGEMENT_URL"])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def _spawn(self, name: str, args: list[str], cwd: Path | None = None,
               env: dict[str, str] | None = None) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115  (the child owns it)
        proc = subprocess.Popen(args, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def up(self, timeout: float = 120) -> dict[str, str]:
        """Start everything not running yet; returns the URLs."""
        if self.running():
            raise RuntimeError(f"a stack already runs from {self.data_dir}; `mec down` first")
        for what, port in (("API", self.ports.api), ("TorchServe inference", self.ports.inference),
                           ("TorchServe management", self.ports.management),
                           ("TorchServe metrics", self.ports.metrics)):
            if port_taken(port):
                raise RuntimeError(f"port {port} ({what}) is taken; stop what uses it or pick "
                                   "other ports (see `mec up --help`)")
        from mec_platform.migrate import upgrade
        from serving.torchserve import process_env, write_config

        upgrade(self.settings.database_url)
        ts_home, store = self.settings.torchserve_home, self.settings.model_store
        store.mkdir(parents=True, exist_ok=True)
        config = write_config(ts_home, store, self.ports.inference, self.ports.management,
                              self.ports.metrics)
        self._spawn("torchserve", [_bin("torchserve"), "--start", "--foreground", "--ts-config",
                                   str(config), "--model-store", str(store), "--ncs"],
                    cwd=ts_home, env=process_env(self.env, ts_home))
        self._spawn("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host",
                            "127.0.0.1", "--port", str(self.ports.api)])
        self._spawn("worker", [sys.executable, "-m", "celery", "-A", "worker.main", "worker",
                               "-Q", "gpu,cpu", "--pool", "solo", "-n", "local@%h",
                               "--loglevel", "INFO"])
        (self.run_dir / "ports.json").write_text(json.dumps(self.ports.__dict__))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.down()
            raise
        return self.urls()

    def urls(self) -> dict[str, str]:
        return {"dashboard": f"{self.api_url}/ui/", "api": self.api_url,
                "docs": f"{self.api_url}/docs",
                "torchserve_inference": self.env["MEC_TORCHSERVE_INFERENCE_URL"],
                "torchserve_management": self.env["MEC_TORCHSERVE_MANAGEMENT_URL"],
                "logs": str(self.log_dir)}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = {"api", "worker", "torchserve"}
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                if not _alive(self.pid(name)):
                    raise RuntimeError(f"{name} exited at start; see {self.log_dir}/{name}.log")
            if "api" in waiting and _get(f"{self.api_url}/readyz"):
                waiting.discard("api")
            if "worker" in waiting and self._worker_registered():
                waiting.discard("worker")
            keys = self.settings.torchserve_home / "key_file.json"
            if "torchserve" in waiting and keys.exists():
                waiting.discard("torchserve")
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"{', '.join(sorted(waiting))} not ready after {timeout}s; "
                               f"see the logs in {self.log_dir}")

    def _worker_registered(self) -> bool:
        from sqlalchemy import func, select

        from mec_platform.tables import Worker

        with self._session() as s:
            return bool(s.scalar(select(func.count()).select_from(Worker)))

    def create_key(self, name: str) -> str:
        """A new API key for this stack's control plane (shown once)."""
        from mec_platform import keys

        with self._session() as s:
            return keys.create(s, name)[1]

    @contextlib.contextmanager
    def _session(self):
        """A session on this stack's database (not the process's settings), its engine
        disposed afterwards."""
        from sqlalchemy.orm import Session

        from mec_platform.db import make_engine

        engine = make_engine(self.settings.database_url)
        try:
            with Session(engine) as s:
                yield s
        finally:
            engine.dispose()

    def pid(self, name: str) -> int | None:
        path = self.run_dir / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None

    def running(self) -> list[str]:
        return [n for n in ("api", "worker", "torchserve") if _alive(self.pid(n))]

    def down(self, timeout: float = 30) -> list[str]:
        """Stop every process this stack started (and their children); returns their names."""
        stopped = []
        for name in ("api", "worker", "torchserve"):
            pid = self.pid(name)
            if _alive(pid):
                _signal_group(pid, signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + timeout
        for name in stopped:
            while _group_alive(self.pid(name)) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(self.pid(name)):
                _signal_group(self.pid(name), signal.SIGKILL)
        for name in ("api", "worker", "torchserve"):
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return stopped


def running_api_url(data_dir: Path) -> str | None:
    """The API's URL of the stack `mec up` left running in `data_dir`, else None."""
    run = data_dir / "run"
    try:
        pid = int((run / "api.pid").read_text())
        port = json.loads((run / "ports.json").read_text())["api"]
    except (OSError, ValueError, KeyError):
        return None
    return f"http://127.0.0.1:{port}" if _alive(pid) else None


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return True


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, from /proc."""
    if not pgid:
        return []
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def _group_alive(pgid: int | None) -> bool:
    return bool(group_members(pgid))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _get(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
