"""Run TorchServe locally with safe defaults, and talk to its management API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

LOG4J = Path(__file__).with_name("log4j2.xml").resolve()  # lean production logging
TORCHSERVE_VERSION = "0.12.0"  # the last release; TorchServe is in limited maintenance


def unused_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that nothing listens on now (all bound at once,
    so the system cannot hand out one of them twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return unused_ports(1)[0]


MAX_DEFAULT_WORKERS = 4


IN_FLIGHT = 8  # images that the default batches of all the workers hold at once


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    threads: int  # torch intra-op threads of each worker
    batch_size: int  # largest dynamic batch of each worker


def worker_plan(workers: int | None = None, threads: int | None = None,
                batch_size: int | None = None, cores: int | None = None,
                gpu: bool = False) -> WorkerPlan:
    """Workers, threads and batches of an endpoint, for what the caller leaves unset.

    Measured on 2 cores (docs/performance.md): two one-thread workers serve 32 clients
    faster than one worker with both cores, whose second thread idles while it decodes and
    answers; and with batches of 4 instead of 8, eight clients keep both workers busy
    instead of filling one batch. So by default: one worker per core (at most
    MAX_DEFAULT_WORKERS; one on a GPU host), the cores shared among them, and batches of
    IN_FLIGHT / workers images (at least 2)."""
    cores = cores or os.cpu_count() or 1
    workers = workers or (1 if gpu else min(cores, MAX_DEFAULT_WORKERS))
    return WorkerPlan(workers, threads or max(1, cores // workers),
                      batch_size or max(2, IN_FLIGHT // workers))


def write_config(home: Path, model_store: Path, inference_port: int, management_port: int,
                 metrics_port: int, max_request_bytes: int = 10 * 1024 * 1024,
                 token_expiration_min: int = 60, inference_host: str = "127.0.0.1",
                 extra: dict[str, str] | None = None) -> Path:
    """config.properties: management and metrics on loopback only, token authorization
    on, models only from our store, bounded request size, metrics in Prometheus' format.
    The gRPC APIs, which the platform does not use, listen on loopback on free ports, so
    that several instances can share a host.
    `extra`: further config.properties entries (e.g. number_of_netty_threads)."""
    store = model_store.resolve()
    grpc_inference, grpc_management = unused_ports(2)
    lines = {
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "inference_address": f"http://{inference_host}:{inference_port}",
        "management_address": f"http://127.0.0.1:{management_port}",
        "metrics_address": f"http://127.0.0.1:{metrics_port}",
        "model_store": str(store),
        "enable_model_api": "true",  # registration through the (loopback) management API
        "allowed_urls": f"file://{store}/.*\\\\.mar,{store}/.*\\\\.mar",
        "max_request_size": str(max_request_bytes),
        "max_response_size": str(max_request_bytes),
        "token_expiration_min": str(token_expiration_min),
        "default_workers_per_model": "1",
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "metrics_mode": "prometheus",  # GET metrics_address/metrics (TorchServe's is "log")
        "async_logging": "true",
        "vmargs": f"-Dlog4j.configurationFile=file://{LOG4J}",
    } | (extra or {})
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def process_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """TorchServe's environment: logs under `home`, and its pid file too (TorchServe keeps
    it in the temporary directory and refuses to start beside another instance's)."""
    return dict(env) | {"LOG_LOCATION": str(home / "logs"), "METRICS_LOCATION": str(home / "logs"),
                        "TMPDIR": str(home)}


RENEW_BEFORE_S = 300  # renew a TorchServe key this long before it expires


def _expiry(entry: dict) -> datetime:
    """'2026-12-01T05:26:19.595757103Z' (nanoseconds, which datetime does not read)."""
    return datetime.fromisoformat(entry["expiration time"][:19]).replace(tzinfo=timezone.utc)


@dataclass
class Keys:
    """TorchServe's token-authorization keys, read from the key_file.json it writes:
    the management and inference keys (which expire) and the API key that renews them."""

    management: str
    inference: str
    api: str = ""
    expires: dict[str, datetime] = field(default_factory=dict)

    @staticmethod
    def read(home: Path) -> Keys:
        data = json.loads((home / "key_file.json").read_text())
        return Keys(data["management"]["key"], data["inference"]["key"],
                    data.get("API", {}).get("key", ""),
                    {kind: _expiry(data[kind]) for kind in ("management", "inference")
                     if "expiration time" in data[kind]})

    def expiring(self, within_s: float = RENEW_BEFORE_S) -> list[str]:
        """The kinds of key that expire within `within_s` seconds."""
        soon = datetime.now(timezone.utc) + timedelta(seconds=within_s)
        return [kind for kind, at in self.expires.items() if at <= soon]


def fresh_keys(home: Path, management_url: str, force: tuple[str, ...] = ()) -> Keys:
    """The keys in `home`'s key_file.json, each renewed first (TorchServe's token API, with
    the API key; TorchServe rewrites the file) when it expires within RENEW_BEFORE_S, or
    when listed in `force` (a key TorchServe just refused)."""
    keys = Keys.read(home)
    stale = sorted(set(keys.expiring()) | set(force))
    for kind in stale:
        response = httpx.post(f"{management_url}/token", params={"type": kind}, timeout=30,
                              headers={"Authorization": f"Bearer {keys.api}"})
        if response.status_code != 200:
            raise RuntimeError(f"TorchServe did not renew its {kind} key: "
                               f"{response.status_code} {response.text}")
    return Keys.read(home) if stale else keys


class LocalTorchServe:
    """A TorchServe process in `home` (its working directory, logs and key file)."""

    def __init__(self, home: Path, model_store: Path, inference_port: int,
                 management_port: int, metrics_port: int, extra: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        if shutil.which("java") is None:
            raise RuntimeError("TorchServe needs Java 17 or newer: install a JDK "
                               "(Debian: apt-get install openjdk-17-jre-headless)")
        self.home, self.store = home, model_store
        self.inference_url = f"http://127.0.0.1:{inference_port}"
        self.management_url = f"http://127.0.0.1:{management_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.config = write_config(home, model_store, inference_port, management_port,
                                   metrics_port, extra=extra)
        self.env = process_env(os.environ | (env or {}), home)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> LocalTorchServe:
        self.store.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("torchserve") or str(Path(sys.executable).with_name("torchserve"))
        log = open(self.home / "torchserve.out", "ab")  # noqa: SIM115  (owned by the process)
        self.process = subprocess.Popen(
            [binary, "--start", "--foreground", "--ts-config", str(self.config),
             "--model-store", str(self.store), "--ncs"],
            cwd=self.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited; see {self.home / 'torchserve.out'}")
            try:
                if (self.home / "key_file.json").exists() and httpx.get(
                        f"{self.inference_url}/ping", timeout=2,
                        headers={"Authorization": f"Bearer {self.keys().inference}"}
                ).status_code == 200:
                    return self
            except (httpx.TransportError, json.JSONDecodeError, KeyError):
                pass  # not up yet, or the key file is half written
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"TorchServe did not answer within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def keys(self) -> Keys:
        return Keys.read(self.home)

    def management(self) -> Management:
        return Management(self.management_url, self.keys().management)


class Management:
    """The management API calls the platform needs, with the management key."""

    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=300,
                                   headers={"Authorization": f"Bearer {key}"})

    def register(self, mar: str, model_name: str | None = None, workers: int = 1,
                 batch_size: int = 8, max_batch_delay_ms: int = 20) -> dict:
        params = {"url": mar, "initial_workers": workers, "synchronous": "true",
                  "batch_size": batch_size, "max_batch_delay": max_batch_delay_ms}
        if model_name:
            params["model_name"] = model_name
        response = self.client.post("/models", params=params)
        if response.status_code >= 300:
            raise RuntimeError(f"TorchServe refused {mar}: {response.status_code} "
                               f"{response.text}")
        return response.json()

    def names(self) -> set[str]:
        """The names of the registered models (every page of the list)."""
        names, token = set(), None
        while True:
            response = self.client.get("/models", params={"limit": 1000} | (
                {"next_page_token": token} if token else {}))
            response.raise_for_status()
            names |= {m["modelName"] for m in response.json().get("models", [])}
            token = response.json().get("nextPageToken")
            if not token:
                return names

    def describe(self, name: str) -> list[dict] | None:
        response = self.client.get(f"/models/{name}/all")
        return response.json() if response.status_code == 200 else None

    def set_default(self, name: str, version: str) -> None:
        self.client.put(f"/models/{name}/{version}/set-default").raise_for_status()

    def unregister(self, name: str, version: str | None = None) -> None:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        response = self.client.delete(path)
        if response.status_code not in (200, 404):
            response.raise_for_status()
