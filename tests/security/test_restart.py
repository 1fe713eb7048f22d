"""Deployments survive restarts: deploy, fill a gallery, then `mec down`/`mec up`, a
kill -9 of TorchServe alone, of the API alone, and TorchServe coming back empty under a
running stack; each time the model embeds and its gallery answers with no redeploy, at the
same version. A deployment whose archive is gone is marked lost, with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness import (
    _drop_database,
    _postgres_database,
    b64png,
    base_env,
    release_redis_db,
    take_redis_db,
)

from mec_platform.stack import Ports, Stack
from serving.process_groups import group_members
from serving.torchserve import unused_ports

TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 256, "epochs": 1,
        "max_steps": 4, "log_every": 2}



class LocalStack:
    """`mec up` / `mec down` of one data directory, as an operator runs them."""

    def __init__(self, root: Path, backend: str) -> None:
        self.data = root / "data"
        self.env = base_env(root) | {"MEC_DATA_DIR": str(self.data)}
        self.database = self.redis_db = None
        if backend == "postgres+redis":
            self.database, self.redis_db = _postgres_database(), take_redis_db()
            self.env |= {"MEC_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/"
                                             f"{self.database}",
                         "MEC_BROKER_URL": f"redis://127.0.0.1:6379/{self.redis_db}"}
        self.ports = unused_ports(4)

    def mec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "mec_client", *args], env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert not check or done.returncode == 0, done.stdout + done.stderr + self.logs()
        return done

    def up(self) -> subprocess.CompletedProcess:
        return self.mec("up", "--data-dir", str(self.data), *[
            f"--{what}-port={port}" for what, port in
            zip(("api", "inference", "management", "metrics"), self.ports)])

    def down(self) -> None:
        self.mec("down", "--data-dir", str(self.data))

    def pid(self, name: str) -> int:
        return int((self.data / "run" / f"{name}.pid").read_text())

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}"
                       for p in (self.data / "logs").glob("*.log"))

    def close(self) -> None:
        self.mec("down", "--data-dir", str(self.data), check=False)
        if self.database:
            _drop_database(self.database)
            release_redis_db(self.redis_db)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("backend", [
    "embedded", pytest.param("postgres+redis", marks=pytest.mark.slow)])  # ~4 min: CI time
def test_deployments_survive_restarts_and_kill_9(tmp_path, backend):
    stack = LocalStack(tmp_path, backend)
    try:
        stack.up()
        key = stack.mec("keys", "create", "--name", "ops").stdout.strip()
        api = httpx.Client(base_url=f"http://127.0.0.1:{stack.ports[0]}", timeout=60,
                           headers={"Authorization": f"Bearer {key}"})

        def wait_job(job: dict) -> dict:
            done = _wait(lambda: (j := api.get(f"/v1/jobs/{job['id']}").json())["status"]
                         in ("succeeded", "failed") and j, 300, f"job {job['id']}")
            assert done["status"] == "succeeded", done["error"]
            return done

        job = wait_job(api.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).json())
        model_id = next(m["id"] for m in api.get("/v1/models").json()["data"]
                        if m["job_id"] == job["id"])
        wait_job(api.post(f"/v1/models/{model_id}/deploy", json={
            "workers": 1, "gallery_limit": 64}).json())
        deployed = api.get(f"/v1/models/{model_id}").json()["deployment"]
        made = api.post("/v1/galleries", json={"name": "shop", "model_id": model_id})
        assert made.status_code == 201, made.text
        items = [{"id": f"sku-{i}", "image": b64png(i)} for i in range(4)]
        assert api.post("/v1/galleries/shop/items", json={"items": items}).status_code == 200
        before = api.post(f"/v1/models/{model_id}/embed",
                          json={"images": [b64png(2)]}).json()["embeddings"][0]

        def still_served(what: str) -> None:
            embedded = api.post(f"/v1/models/{model_id}/embed", json={"images": [b64png(2)]})
            assert embedded.status_code == 200, f"after {what}: {embedded.text}"
            assert np.allclose(embedded.json()["embeddings"][0], before, atol=1e-6)
            found = api.post("/v1/galleries/shop/search", json={"image": b64png(2), "k": 2})
            assert found.status_code == 200, f"after {what}: {found.text}"
            assert found.json()["results"][0]["id"] == "sku-2"
            assert found.json()["model_version"] == made.json()["model_version"]
            assert api.get(f"/v1/models/{model_id}").json()["deployment"] == deployed
            assert api.get("/readyz").json() == {"status": "ready"}, what

        still_served("the deploy")
        stack.down()
        stack.up()
        still_served("mec down, mec up")

        # kill -9 of TorchServe alone (its launcher and Java server): `mec up` starts it
        # again, and leaves the API and the worker that still run alone
        survivors = {n: stack.pid(n) for n in ("api", "worker")}
        os.killpg(stack.pid("torchserve"), signal.SIGKILL)
        _wait(lambda: not group_members(stack.pid("torchserve")), 30, "TorchServe to die")
        assert "torchserve" not in Stack(stack.data, Ports(*stack.ports)).running()
        stack.up()
        assert {n: stack.pid(n) for n in ("api", "worker")} == survivors
        still_served("kill -9 of TorchServe, mec up")

        # kill -9 of the API alone: `mec up` brings it back instead of refusing
        os.kill(stack.pid("api"), signal.SIGKILL)
        _wait(lambda: not group_members(stack.pid("api")), 30, "the API to die")
        stack.up()
        still_served("kill -9 of the API, mec up")
        refused = stack.mec("up", "--data-dir", str(stack.data), check=False)
        assert refused.returncode != 0 and "already runs" in refused.stderr
        assert f"dashboard http://127.0.0.1:{stack.ports[0]}/ui/" in refused.stderr

        # TorchServe back empty under a running stack (a container restart): the API is
        # not ready, naming the model, until the worker's heartbeat registers it again
        running = Stack(stack.data, Ports(*stack.ports))
        settings, management = running.settings, running.torchserve()
        os.killpg(stack.pid("worker"), signal.SIGSTOP)
        for endpoint in (deployed["name"], f"{deployed['name']}-knn"):
            management.unregister(endpoint)
        not_ready = api.get("/readyz")
        assert not_ready.status_code == 503, not_ready.text
        assert not_ready.json()["detail"].endswith(f"not registered in the model server yet: "
                                                   f"{model_id}")
        os.killpg(stack.pid("worker"), signal.SIGCONT)
        _wait(lambda: {deployed["name"], f"{deployed['name']}-knn"} <= management.names(),
              60, "the worker to register the model again")
        still_served("TorchServe lost its models")

        # an archive gone: the deployment is marked lost with the reason, not left serving
        for endpoint in (deployed["name"], f"{deployed['name']}-knn"):
            (settings.model_store / f"{endpoint}-v{deployed['number']}.mar").unlink()
            management.unregister(endpoint)
        lost = _wait(lambda: (d := api.get(f"/v1/models/{model_id}").json()["deployment"])
                     ["status"] == "lost" and d, 60, "the deployment to be marked lost")
        assert "is gone from the store" in lost["reason"]
        refused = api.post(f"/v1/models/{model_id}/embed", json={"images": [b64png(2)]})
        assert refused.status_code == 409 and "is gone" in refused.json()["detail"]
        assert api.get("/readyz").status_code == 200  # a lost deployment is not waited for
    finally:
        stack.close()
