"""The real-process test platform: an API process and Celery workers sharing one
environment, and throwaway PostgreSQL databases. Imported by the conftest and by test
modules that build a platform of their own (a name no other test directory uses)."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
import numpy as np
import psycopg
import redis
from PIL import Image

from serving.torchserve import LocalTorchServe, unused_port, unused_ports

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Platforms alive at once (the session's shared one and a module's own) need a Redis
# database each: a worker on another platform's database takes that platform's jobs.
# Several checkouts may run their tests at once against the one Redis: give each its own
# databases with MEC_TEST_REDIS_DBS (the first is the shared platform's).
_FREE_REDIS_DBS = [int(db) for db in os.environ.get("MEC_TEST_REDIS_DBS", "7,12,13,14,15")
                   .split(",")]
REDIS_DB = _FREE_REDIS_DBS[0]


def take_redis_db() -> int:
    """A Redis database no live platform of this run uses, emptied."""
    db = _FREE_REDIS_DBS.pop(0)
    redis.Redis(db=db).flushdb()
    return db


def release_redis_db(db: int) -> None:
    redis.Redis(db=db).flushdb()
    _FREE_REDIS_DBS.insert(0, db)


class Platform:
    """An API process and any number of worker processes sharing one environment."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.port = unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self.api: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def new_key(self, name: str, *options: str) -> str:
        """`mec keys create` with `options` (--scope, --project), as an operator runs it."""
        done = subprocess.run([sys.executable, "-m", "mec_client", "keys", "create",
                               "--name", name, *options],
                              env=self.env, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def _spawn(self, args: list[str], log: str, env: dict[str, str] | None = None
               ) -> subprocess.Popen:
        out = open(self.root / log, "ab")  # noqa: SIM115  (owned by the process)
        proc = subprocess.Popen(args, env=self.env | (env or {}), stdout=out,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_api(self, **env: str) -> None:
        """The API under uvicorn, with `env` added to its environment only."""
        self.api = self._spawn([sys.executable, "-m", "uvicorn", "api.main:app", "--host",
                                "127.0.0.1", "--port", str(self.port)], "api.log", env)
        self.wait_for(lambda: self._up(), 30, "API to answer /healthz")

    def _up(self) -> bool:
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def start_worker(self, name: str, queues: str = "gpu,cpu", **env_overrides: str
                     ) -> subprocess.Popen:
        env = self.env | env_overrides | {"MEC_WORKER_NAME": name}
        out = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.main", "worker", "-Q", queues,
             "--pool", "solo", "-n", f"{name}@%h", "--loglevel", "INFO"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.workers[name] = proc
        self.wait_for(lambda: any(w["name"] == name for w in self.get("/v1/workers")), 60,
                      f"worker {name} to register")
        return proc

    def get(self, path: str, **kw):
        response = self.client.get(path, **kw)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, json=None, expect: int = 201, **kw):
        response = self.client.post(path, json=json, **kw)
        assert response.status_code == expect, response.text
        return response.json()

    def wait_for(self, predicate, timeout: float, what: str, every: float = 0.3):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")

    def wait_status(self, job_id: int, statuses: tuple[str, ...], timeout: float = 240):
        return self.wait_for(lambda: (j := self.get(f"/v1/jobs/{job_id}"))["status"] in statuses
                             and j, timeout, f"job {job_id} to reach {statuses}")

    def runner_of(self, job_id: int, past_step: int) -> str:
        """Wait until the job has passed `past_step`; the name of the worker running it."""
        self.wait_for(lambda: self.get(f"/v1/jobs/{job_id}")["progress"]["step"] >= past_step,
                      180, f"job {job_id} to pass step {past_step}")
        return self.wait_for(lambda: next((w["name"] for w in self.get("/v1/workers")
                                           if w["current_job"] == job_id), None),
                             10, f"the worker of job {job_id}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.client.close()


def _postgres_database():
    name = f"mec_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def base_env(root: Path) -> dict[str, str]:
    """Short leases and polls, so faults show within seconds; workers run jobs of up to
    2 processes (gloo)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")}
    return env | {"MEC_DATA_DIR": str(root / "data"), "MEC_LEASE_SECONDS": "6",
                  "MEC_HEARTBEAT_SECONDS": "1", "MEC_REAPER_SECONDS": "2",
                  "MEC_CANCEL_POLL_SECONDS": "0.5", "MEC_MAX_ATTEMPTS": "3",
                  "MEC_SUBMIT_RATE_PER_MINUTE": "6", "MEC_SUBMIT_BURST": "20",
                  "MEC_MAX_UPLOAD_MB": "8", "MEC_WORKER_PROCESSES": "2",
                  "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def open_platform(root: Path, env: dict[str, str], backend: str) -> Platform:
    """Migrate the database and create an API key; no process is started yet."""
    subprocess.run([sys.executable, "-m", "mec_client", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    plat = Platform(root, env)
    plat.key = plat.new_key("tests")
    plat.client.headers["Authorization"] = f"Bearer {plat.key}"
    plat.backend = backend
    return plat


@contextmanager
def postgres_and_redis():
    """A throwaway PostgreSQL database and a Redis database no live platform uses, as the
    settings that point a platform at them; dropped and released on exit."""
    database, redis_db = _postgres_database(), take_redis_db()
    try:
        yield {"MEC_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
               "MEC_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}"}
    finally:
        _drop_database(database)
        release_redis_db(redis_db)


@contextmanager
def s3_platform(root: Path, s3_server, **env_overrides: str):
    """A platform on a throwaway PostgreSQL and Redis and a bucket of its own on the S3
    server (`plat.bucket`, `plat.store_url`), its API's folder root/api; nothing started
    (each process gets a folder of its own as it starts), all stopped on exit."""
    bucket = s3_server.bucket(f"mec-{uuid.uuid4().hex[:12]}")
    with postgres_and_redis() as backing:
        env = base_env(root) | s3_server.env | backing | {
            "MEC_STORAGE_URL": f"s3://{bucket}/platform"} | env_overrides
        plat = open_platform(root, env | {"MEC_DATA_DIR": str(root / "api")},
                             "postgres+redis")
        plat.bucket, plat.store_url = bucket, env["MEC_STORAGE_URL"]
        try:
            yield plat
        finally:
            plat.stop()


@contextmanager
def full_platform(root: Path, backend: str, api_env: dict[str, str] | None = None,
                  **env_overrides: str):
    """API, one worker (w1) and TorchServe on `backend` ("embedded" or "postgres+redis",
    a database of its own, dropped afterwards), all stopped on exit; `api_env`: variables
    of the API process only."""
    with postgres_and_redis() if backend == "postgres+redis" else nullcontext({}) as backing:
        env = base_env(root) | env_overrides | backing
        ts_ports = unused_ports(3)
        env |= {"MEC_TORCHSERVE_INFERENCE_URL": f"http://127.0.0.1:{ts_ports[0]}",
                "MEC_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{ts_ports[1]}",
                "MEC_TORCHSERVE_HOME": str(root / "torchserve"),
                "MEC_MODEL_STORE": str(root / "model-store")}
        plat = open_platform(root, env, backend)
        plat.database = backing.get("MEC_DATABASE_URL", "").rpartition("/")[2] or None
        plat.torchserve = LocalTorchServe(root / "torchserve", root / "model-store", *ts_ports)
        try:
            plat.torchserve.start()
            plat.start_api(**(api_env or {}))
            plat.start_worker("w1")
            yield plat
        finally:
            plat.stop()
            plat.torchserve.stop()


def png(seed: int, side: int = 32) -> bytes:
    """A random RGB image (side x side) as PNG bytes, the same for the same seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def images_archive(path: Path, classes: int = 4, per_class: int = 60) -> None:
    """A .tar.gz of an image-folder dataset; class c's images drawn from seeds of c's own
    range, so that classes differ."""
    with tarfile.open(path, "w:gz") as tar:
        for c in range(classes):
            for i in range(per_class):
                data = png(1000 * c + i % 7, side=16)  # 7 looks per class, repeated
                info = tarfile.TarInfo(f"shapes/class{c}/{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def b64png(seed: int) -> str:
    """png(seed) in base64, as JSON bodies carry images."""
    return base64.b64encode(png(seed)).decode()

