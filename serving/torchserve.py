"""Run TorchServe locally with safe defaults: its configuration, its workers and its process
(serving.client talks to it)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from serving import plugin
from serving.client import MAX_REQUEST_BYTES, Keys, TorchServe
from serving.process_groups import stop_groups

log = logging.getLogger(__name__)
LOG4J = Path(__file__).with_name("log4j2.xml").resolve()  # lean production logging
TORCHSERVE_VERSION = "0.12.0"  # the last release; TorchServe is in limited maintenance


def ephemeral_ports() -> range:
    """The ports the system hands to outgoing connections (Linux's ip_local_port_range)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def unused_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that nothing listens on now, all bound at once.
    They lie below the ephemeral range: between this call and the server's bind, no
    outgoing connection of another process can be given one of them as its own port (a
    busy host's connections to Redis or PostgreSQL could, and the server then fails to
    start)."""
    first_ephemeral = ephemeral_ports().start
    below = range(max(1024, first_ephemeral - 16384), first_ephemeral)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in random.sample(below, len(below)):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use
                s.close()
                continue
            stack.enter_context(s)
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"fewer than {n} free TCP ports in {below.start}-{below.stop - 1}")


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


def frontend_jvm_options(cores: int | None = None) -> list[str]:
    """Options of TorchServe's Java frontend on a host of at most 2 cores, where with
    the JVM's defaults the first minute after a start serves a tenth fewer requests (its
    compiler at work) and, once warm, 8 clients lose a point or two more (docs/
    performance.md, "Serving": three runs at 10.0-11.1 % overhead against 12.1 % with the
    defaults; one run of each option alone at 8 / 32 clients: defaults 13.0 / 8.5 %, each
    option 10.2 / 4.1, 11.2 / 10.4, 10.6 / 9.3 %, the three 2.8 / 1.6 %):
    - TorchServe hands each batch to its worker with CompletableFuture.runAsync, which
      starts a new thread per call while the common ForkJoin pool has one thread (cores
      - 1): two threads in the pool;
    - the optimising compiler (C2) takes a tenth of a core for the first ~45 s under
      load: the quick compiler (C1) only, as the frontend's own work is small;
    - the serial collector, which the JVM picks by itself below 2 cores.
    On more cores the JVM's defaults stay (not measured there)."""
    if (cores or os.cpu_count() or 1) > 2:
        return []
    return ["-Djava.util.concurrent.ForkJoinPool.common.parallelism=2",
            "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]


def write_config(home: Path, model_store: Path, inference_port: int, management_port: int,
                 metrics_port: int, max_request_bytes: int = MAX_REQUEST_BYTES,
                 token_expiration_min: int = 60, inference_host: str = "127.0.0.1",
                 extra: dict[str, str] | None = None, archive_urls: str | None = None,
                 jvm_options: list[str] | None = None, plugins: Path | None = None) -> Path:
    """config.properties: management and metrics on loopback only, token authorization
    on, models only from our store, bounded request size, metrics in Prometheus' format.
    The gRPC APIs, which the platform does not use, listen on loopback on free ports, so
    that several instances can share a host.
    `extra`: further config.properties entries (e.g. number_of_netty_threads).
    `archive_urls`: a regular expression of further URLs it may download archives from
    into its model store (an S3 store's presigned URLs). `jvm_options`: the Java
    frontend's options besides its logging (default: frontend_jvm_options()). `plugins`:
    the folder of our plugin's jar (serving.plugin)."""
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
        "allowed_urls": f"file://{store}/.*\\\\.mar,{store}/.*\\\\.mar" + (
            "," + archive_urls.replace("\\", "\\\\") if archive_urls else ""),
        "max_request_size": str(max_request_bytes),
        "max_response_size": str(max_request_bytes),
        "token_expiration_min": str(token_expiration_min),
        "default_workers_per_model": "1",
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "metrics_mode": "prometheus",  # GET metrics_address/metrics (TorchServe's is "log")
        "async_logging": "true",
        "vmargs": " ".join([f"-Dlog4j.configurationFile=file://{LOG4J}",
                            *(frontend_jvm_options() if jvm_options is None
                              else jvm_options)]),
    } | ({"plugins_path": str(plugins)} if plugins else {}) | (extra or {})
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


# How long an idle OpenMP thread of a worker busy-waits before it sleeps, in libgomp's
# spins (torch's OpenMP on Linux; its default is 300,000, several milliseconds). A batch of
# one request runs on every core (serving.handler); after it, the worker's other threads
# spin on cores that the next worker, or the frontend, needs: with two workers taking
# turns, one client's forward took 20 ms instead of 14 in-process. Not much shorter:
# 1,000 is as slow as the default, most likely as the threads then sleep between a
# forward's parallel regions. One client, 2-core AMD EPYC (AVX2), p50 against in-process
# (docs/performance.md):
# default 22 / 14.5 ms, 100,000: 18 / 14.1, 30,000: 20 / 14.4, 10,000: 16-17 / 14.1-14.4,
# 3,000: 17 / 14.6, 1,000: 22 / 15.2.
WORKER_OMP_SPINCOUNT = 10_000


def process_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """TorchServe's environment (its workers inherit it): the workers' OpenMP spin
    (WORKER_OMP_SPINCOUNT, unless `env` sets GOMP_SPINCOUNT), logs under `home`, and its
    pid file too (TorchServe keeps it in the temporary directory and refuses to start
    beside another instance's)."""
    logs = str(home / "logs")
    return ({"GOMP_SPINCOUNT": str(WORKER_OMP_SPINCOUNT)} | dict(env)
            | {"LOG_LOCATION": logs, "METRICS_LOCATION": logs, "TMPDIR": str(home)})


def _plugins() -> Path | None:
    """Our plugin's folder (serving.plugin), built if needed; None without a JDK, when
    a lone request waits the whole batch delay as in TorchServe itself."""
    plugins = plugin.cached()
    if plugins is None:
        log.warning("no javac (the JDK's compiler): TorchServe starts without our plugin, "
                    "so a lone request waits the whole batch delay")
    return plugins


class LocalTorchServe:
    """A TorchServe process in `home` (its working directory, logs and key file): how `mec
    up`, the tests and the benchmarks start and stop TorchServe."""

    def __init__(self, home: Path, model_store: Path, inference_port: int,
                 management_port: int, metrics_port: int, extra: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, archive_urls: str | None = None,
                 jvm_options: list[str] | None = None) -> None:
        if shutil.which("java") is None:
            raise RuntimeError("TorchServe needs Java 17 or newer: install a JDK "
                               "(Debian: apt-get install openjdk-17-jdk-headless)")
        self.home, self.store = home, model_store
        self.inference_url = f"http://127.0.0.1:{inference_port}"
        self.management_url = f"http://127.0.0.1:{management_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.config = write_config(home, model_store, inference_port, management_port,
                                   metrics_port, extra=extra, archive_urls=archive_urls,
                                   jvm_options=jvm_options, plugins=_plugins())
        self.env = process_env(os.environ | (env or {}), home)
        self.process: subprocess.Popen | None = None

    def spawn(self, log: Path | None = None) -> int:
        """Start TorchServe in a session (process group) of its own, its output appended to
        `log` (default: home/torchserve.out), without waiting for it; returns its pid."""
        self.store.mkdir(parents=True, exist_ok=True)
        # the keys of a TorchServe that is gone: readiness waits for the new one's
        (self.home / "key_file.json").unlink(missing_ok=True)
        binary = shutil.which("torchserve") or str(Path(sys.executable).with_name("torchserve"))
        with open(log or self.home / "torchserve.out", "ab") as out:
            self.process = subprocess.Popen(
                [binary, "--start", "--foreground", "--ts-config", str(self.config),
                 "--model-store", str(self.store), "--ncs"],
                cwd=self.home, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=self.env)
        return self.process.pid

    def start(self, timeout: float = 90) -> LocalTorchServe:
        """spawn(), then wait until TorchServe answers; if it exits instead (a port taken),
        the error holds what it printed."""
        out = self.home / "torchserve.out"
        before = out.stat().st_size if out.exists() else 0  # output of earlier starts
        self.spawn(out)
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(out, "rb") as f:
                    f.seek(before)
                    printed = f.read().decode(errors="replace")
                raise RuntimeError(f"TorchServe did not start; it printed (in {out}):\n"
                                   + "\n".join(printed.splitlines()[-20:]))
            if client.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"TorchServe did not answer within {timeout}s")

    def stop(self) -> None:
        """Stop the TorchServe this object started, as `mec down` stops a stack's."""
        if self.process is not None:
            stop_groups([self.process.pid])
            self.process.wait()  # reaped: no zombie left

    def processes(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """The processes it runs now: the Java frontend's, and the Python workers'."""
        launcher = psutil.Process(self.process.pid)
        every = [launcher, *launcher.children(recursive=True)]
        return ([p for p in every if p.name().startswith("java")],
                [p for p in every if "model_service_worker" in " ".join(p.cmdline())])

    def keys(self) -> Keys:
        return Keys.read(self.home)

    def client(self) -> TorchServe:
        return TorchServe(self.inference_url, self.management_url, self.home)
