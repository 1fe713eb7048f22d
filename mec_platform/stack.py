"""`mec up` / `mec down`: the API, a worker and TorchServe as local processes, started by
module path (the launcher imports neither the API nor the worker), and with
`--ray-nodes N` a local Ray cluster of N nodes beside them (mec_platform.local_ray).

Each process gets its own session (process group), a log file under data_dir/logs and a
pid file under data_dir/run, so `mec down` (or the demo's cleanup) stops exactly what
was started, children included.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from mec_client.login import API_PORT
from mec_platform import local_ray
from mec_platform.settings import INFERENCE_PORT, MANAGEMENT_PORT, Settings
from serving.process_groups import stop_groups

if TYPE_CHECKING:
    from serving.client import TorchServe


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on `port`."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


@dataclass
class Ports:
    api: int = API_PORT
    inference: int = INFERENCE_PORT
    management: int = MANAGEMENT_PORT
    metrics: int = 8082
    worker_metrics: int = 9808
    ray: int = 6380  # the Ray head's GCS (6379, Ray's own default, is Redis')

    @staticmethod
    def any_free() -> Ports:
        from serving.torchserve import unused_ports

        return Ports(*unused_ports(6))


@dataclass(frozen=True)
class Process:
    """A process of the stack: the ports it takes, how it starts (returning its pid) and
    whether it is ready."""

    ports: dict[str, int]
    start: Callable[[], int]
    ready: Callable[[], bool]


NAMES = ("torchserve", "api", "worker")  # the processes of a stack, in the order they start


class Stack:
    """The local platform of one data directory, with `ray_nodes` Ray nodes (0: none)."""

    def __init__(self, data_dir: Path, ports: Ports, ray_nodes: int = 0) -> None:
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        saved, ray = self.run_dir / "ports.json", self.run_dir / "ray.json"
        # a stack partly running keeps its ports and its Ray cluster's size and token: the
        # processes left talk to each other there
        running = bool(self.running())
        self.ports = Ports(**json.loads(saved.read_text())) \
            if running and saved.exists() else ports
        cluster = json.loads(ray.read_text()) if running and ray.exists() else \
            {"nodes": ray_nodes, "token": local_ray.new_token()}
        self.ray_nodes = cluster["nodes"]
        self._ray_token = cluster["token"]
        ports = self.ports
        self.env = os.environ | {
            "MEC_DATA_DIR": str(self.data_dir),
            "MEC_TORCHSERVE_INFERENCE_URL": f"http://127.0.0.1:{ports.inference}",
            "MEC_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{ports.management}",
            "PYTHONUNBUFFERED": "1",
        } | ({"MEC_RAY_ADDRESS": local_ray.address(ports.ray)} if self.ray_nodes else {})
        self.settings = Settings(data_dir=self.data_dir,
                                 torchserve_inference_url=self.env["MEC_TORCHSERVE_INFERENCE_URL"],
                                 torchserve_management_url=self.env["MEC_TORCHSERVE_MANAGEMENT_URL"])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def names(self) -> list[str]:
        """The stack's processes in the order they start: its Ray nodes (ray-0 the head),
        then NAMES."""
        return [f"ray-{i}" for i in range(self.ray_nodes)] + list(NAMES)

    def processes(self) -> dict[str, Process]:
        """The stack: its Ray nodes (mec_platform.local_ray), TorchServe
        (serving.torchserve), the API and a worker (by module path: the launcher imports
        neither)."""
        from mec_platform.deployments import archive_urls
        from serving.torchserve import LocalTorchServe

        p, settings = self.ports, self.settings
        since = datetime.now(timezone.utc) - timedelta(seconds=5)  # a killed worker's is older

        def start_torchserve() -> int:
            return LocalTorchServe(settings.torchserve_home, settings.model_store, p.inference,
                                   p.management, p.metrics, env=self.env,
                                   archive_urls=archive_urls()
                                   ).spawn(self._log("torchserve"))

        return {**{f"ray-{i}": self._ray_node(i) for i in range(self.ray_nodes)},
            "torchserve": Process(
                {"TorchServe inference": p.inference, "TorchServe management": p.management,
                 "TorchServe metrics": p.metrics}, start_torchserve, self.torchserve().ready),
            "api": Process(
                {"API": p.api},
                lambda: self._spawn("api", [sys.executable, "-m", "uvicorn", "api.main:app",
                                            "--host", "127.0.0.1", "--port", str(p.api)]),
                lambda: _get(f"{self.api_url}/healthz")),
            "worker": Process(
                {"worker metrics": p.worker_metrics},
                lambda: self._spawn("worker", [sys.executable, "-m", "celery", "-A",
                                               "worker.main", "worker", "-Q", "gpu,cpu", "--pool",
                                               "solo", "-n", "local@%h", "--loglevel", "INFO"],
                                    {"MEC_WORKER_METRICS_PORT": str(p.worker_metrics)} |
                                    self._ray_auth()),
                lambda: self._worker_registered(since)),
        }

    def _ray_node(self, node: int) -> Process:
        """Ray node `node` (0: the head, on the ray port): ready once `ray start` says its
        node runs, in the lines its log gains from now on."""
        from serving.torchserve import unused_ports

        name, log = f"ray-{node}", self._log(f"ray-{node}")
        since = log.stat().st_size if log.exists() else 0
        args, env = local_ray.command(node, self.ray_nodes, self.ports.ray, *unused_ports(1))
        return Process({"Ray head": self.ports.ray} if node == 0 else {},
                       lambda: self._spawn(name, args, env | self._ray_auth()),
                       lambda: local_ray.READY in log.read_bytes()[since:])

    def _ray_auth(self) -> dict[str, str]:
        """The cluster's token, for its nodes and the worker (a run's driver) only."""
        return local_ray.auth(self._ray_token) if self.ray_nodes else {}

    def _log(self, name: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> int:
        with open(self._log(name), "ab") as log:
            return subprocess.Popen(args, env=self.env | (env or {}), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True).pid

    def up(self, timeout: float = 120) -> dict[str, str]:
        """Start what is not running (after a crash or a kill -9 of some of the processes:
        the missing ones, what is left of a dead one's process group stopped first), wait
        until each answers, then serve again the deployments the database records; returns
        the URLs."""
        missing = [n for n in self.names() if not _alive(self.pid(n))]
        if not missing:
            raise RuntimeError(f"a stack already runs from {self.data_dir}: dashboard "
                               f"{self.api_url}/ui/, API {self.api_url}, logs {self.log_dir} "
                               "(`mec down` first to start it again)")
        if any(n.startswith("ray-") for n in missing):  # a Ray cluster restarts whole: a
            # node does not join a new head, nor a head take its old nodes back
            missing = [n for n in self.names() if n.startswith("ray-") or n in missing]
        # what is left of a dead one's group (e.g. TorchServe's Java server, whose launcher
        # was killed), a live Ray node of a cluster that restarts, a node of an earlier
        # stack with more of them: no grace
        stale = [n for n in self._recorded() if n in missing or n not in self.names()]
        stop_groups([pid for name in stale if (pid := self.pid(name))], timeout=0)
        for name in stale:
            (self.run_dir / f"{name}.pid").unlink()
        processes = self.processes()
        for what, port in [p for name in missing for p in processes[name].ports.items()]:
            if port_taken(port):
                raise RuntimeError(f"port {port} ({what}) is taken; stop what uses it or pick "
                                   "other ports (see `mec up --help`)")
        from mec_platform.migrate import upgrade

        upgrade(self.settings.database_url)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in missing:
            (self.run_dir / f"{name}.pid").write_text(str(processes[name].start()))
        (self.run_dir / "ports.json").write_text(json.dumps(self.ports.__dict__))
        ray = os.open(self.run_dir / "ray.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(ray, "w") as f:  # the token: the user's alone
            json.dump({"nodes": self.ray_nodes, "token": self._ray_token}, f)
        try:
            self._wait_ready(timeout, {n: processes[n] for n in missing})
            self.restore()
            # ready: database, broker, and every deployment served again
            self._wait_ready(timeout, {"api": replace(processes["api"], ready=lambda: _get(
                f"{self.api_url}/readyz"))})
        except BaseException:
            self.down()
            raise
        return self.urls()

    def restore(self) -> dict[int, str]:
        """Register again, in this stack's TorchServe, the deployments its database
        records as serving (mec_platform.deployments)."""
        from mec_platform.deployments import restore

        return restore(self._session, self.torchserve, self.settings.model_store)

    def torchserve(self) -> TorchServe:
        """A client of this stack's TorchServe (serving.client)."""
        from mec_platform import model_server

        return model_server.client(self.settings)

    def urls(self) -> dict[str, str]:
        return {"dashboard": f"{self.api_url}/ui/", "api": self.api_url,
                "docs": f"{self.api_url}/docs",
                "torchserve_inference": self.env["MEC_TORCHSERVE_INFERENCE_URL"],
                "torchserve_management": self.env["MEC_TORCHSERVE_MANAGEMENT_URL"],
                "metrics": f"{self.api_url}/metrics",  # Prometheus' targets: these three
                "worker_metrics": f"http://127.0.0.1:{self.ports.worker_metrics}/metrics",
                "torchserve_metrics": f"http://127.0.0.1:{self.ports.metrics}/metrics",
                **({"ray": local_ray.address(self.ports.ray)} if self.ray_nodes else {}),
                "logs": str(self.log_dir)}

    def _wait_ready(self, timeout: float, waiting: dict[str, Process]) -> None:
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                if not _alive(self.pid(name)):
                    raise RuntimeError(f"{name} exited at start; see {self.log_dir}/{name}.log")
                if waiting[name].ready():
                    del waiting[name]
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"{', '.join(sorted(waiting))} not ready after {timeout}s; "
                               f"see the logs in {self.log_dir}")

    def _worker_registered(self, since: datetime) -> bool:
        from sqlalchemy import func, select

        from mec_platform.tables import Worker

        with self._session() as s:
            return bool(s.scalar(select(func.count()).select_from(Worker).where(
                Worker.started_at >= since)))

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

    def _recorded(self) -> list[str]:
        """The processes with a pid file: this stack's, and Ray nodes of an earlier one
        started with more of them."""
        files = {p.stem for p in self.run_dir.glob("*.pid")}
        nodes = sorted((n for n in files if n.startswith("ray-")), key=lambda n: int(n[4:]))
        return nodes + [n for n in NAMES if n in files]

    def running(self) -> list[str]:
        return [n for n in self._recorded() if _alive(self.pid(n))]

    def down(self, timeout: float = 30) -> list[str]:
        """Stop every process this stack started (and their children); returns their names.
        The Ray nodes last and at once: a run's hand-over by the worker needs them, and their
        GCS and `ray start` outlast SIGTERM (Ray's own `ray stop` would stop every Ray node
        of the machine)."""
        pids = {name: self.pid(name) for name in self._recorded()}
        nodes = [pid for name, pid in pids.items() if name.startswith("ray-")]
        stopped = stop_groups([pid for pid in pids.values() if pid not in nodes], timeout)
        stopped += stop_groups(nodes, timeout=0)
        for name in pids:
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return [name for name, pid in pids.items() if pid in stopped]


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


def _get(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
