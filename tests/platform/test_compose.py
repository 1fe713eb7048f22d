"""The shipped docker-compose.yml is valid and wired as documented (no engine runs here:
`docker-compose config` validates it offline)."""

import shutil
import subprocess

import pytest
import yaml

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose is not installed (.ci/run installs it)")


def config() -> dict:
    done = subprocess.run(["docker-compose", "config"], capture_output=True, text=True,
                          check=True)
    return yaml.safe_load(done.stdout)


def test_compose__services_health_checks_and_profiles():
    default = config()
    assert set(default["services"]) == {"postgres", "redis", "api", "worker", "worker-cpu",
                                        "torchserve"}
    assert default["services"]["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("postgres", "redis", "api", "torchserve"):
        assert "healthcheck" in default["services"][name] or name == "api"
        assert default["services"][name]["restart"] == "unless-stopped"
    gpu = default["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "pgdata:/var/lib/postgresql/data" in str(default["services"]["postgres"]["volumes"])
    published = {p["target"] for s in default["services"].values() for p in s.get("ports", [])}
    assert published == {8000, 8080}  # TorchServe management (8081) stays internal
    env = default["services"]["worker"]["environment"]
    assert env["MEC_BROKER_URL"].startswith("redis://")
    assert env["MEC_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_compose__runs_n_workers(monkeypatch):
    monkeypatch.setenv("MEC_WORKERS", "3")
    monkeypatch.setenv("MEC_CPU_WORKERS", "2")
    services = config()["services"]
    assert services["worker"]["deploy"]["replicas"] == 3  # each reserves one GPU
    assert services["worker-cpu"]["deploy"]["replicas"] == 2
    assert "MEC_WORKER_NAME" not in services["worker"]["environment"]  # names: host:pid


def test_compose__a_worker_can_hold_several_gpus_for_multi_process_jobs(monkeypatch):
    def reserved():
        worker = config()["services"]["worker"]
        assert "CUDA_VISIBLE_DEVICES" not in worker["environment"]  # the runtime picks them
        return str(worker["deploy"]["resources"]["reservations"]["devices"][0]["count"])
    assert reserved() == "1"
    monkeypatch.setenv("MEC_GPUS_PER_WORKER", "4")
    assert reserved() == "4"  # and MEC_WORKER_PROCESSES defaults to the 4 GPUs it sees
