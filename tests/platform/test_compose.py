"""The shipped docker-compose.yml is valid and wired as documented (no engine runs here:
`docker-compose config` validates it offline)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.torchserve import WORKER_OMP_SPINCOUNT

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose is not installed (.ci/run installs it)")


def config() -> dict:
    done = subprocess.run(["docker-compose", "config"], capture_output=True, text=True,
                          check=True)
    return yaml.safe_load(done.stdout)


def test_compose__services_health_checks_and_profiles():
    default = config()
    assert set(default["services"]) == {"postgres", "redis", "s3", "api", "worker",
                                        "worker-cpu", "torchserve", "torchserve-keys",
                                        "prometheus", "grafana", "ray-head", "ray-worker"}
    assert default["services"]["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("postgres", "redis", "s3", "api", "torchserve"):
        assert "healthcheck" in default["services"][name] or name == "api"
        assert default["services"][name]["restart"] == "unless-stopped"
    gpu = default["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "pgdata:/var/lib/postgresql/data" in str(default["services"]["postgres"]["volumes"])
    published = {p["target"] for s in default["services"].values() for p in s.get("ports", [])}
    # TorchServe management (8081) stays internal; Grafana is the monitoring profile's
    assert published == {8000, 8080, 3000}
    env = default["services"]["worker"]["environment"]
    assert env["MEC_BROKER_URL"].startswith("redis://")
    assert env["MEC_DATABASE_URL"].startswith("postgresql+psycopg://")
    # the store is the bundled S3 server unless told otherwise; it is not published
    assert env["MEC_STORAGE_URL"] == "s3://mec/platform"
    assert env["MEC_S3_ENDPOINT_URL"] == "http://s3:8333"
    assert default["services"]["api"]["depends_on"]["s3"]["condition"] == "service_healthy"
    # TorchServe's folder is shared with its keys' publisher only; the others read the
    # keys from the store
    assert {name for name, service in default["services"].items()
            if "ts-home" in str(service.get("volumes", []))} == {"torchserve", "torchserve-keys"}
    assert env["MEC_TORCHSERVE_KEYS"] == "store"
    keys = default["services"]["torchserve-keys"]
    assert keys["command"][:3] == ["mec", "torchserve", "publish-keys"]
    assert keys["image"] == default["services"]["torchserve"]["image"]


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


def test_compose__monitoring_profile_scrapes_api_workers_and_torchserve():
    done = subprocess.run(["docker-compose", "--profile", "monitoring", "config"],
                          capture_output=True, text=True, check=True)
    services = yaml.safe_load(done.stdout)["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    # Prometheus reaches the API, the workers and TorchServe on the internal network only,
    # the one the API serves GET /metrics to without a key
    monitoring = yaml.safe_load(done.stdout)["networks"]["monitoring"]
    assert monitoring["internal"] is True
    subnet = monitoring["ipam"]["config"][0]["subnet"]
    assert yaml.safe_load(services["api"]["environment"]["MEC_METRICS_NETWORKS"]) == [subnet]
    assert set(services["prometheus"]["networks"]) == {"monitoring"}
    for name in ("api", "worker", "worker-cpu", "torchserve", "grafana"):
        assert "monitoring" in services[name]["networks"], name
    for name in ("worker", "worker-cpu"):
        assert services[name]["environment"]["MEC_WORKER_METRICS_PORT"] == "9808"
    # the files it mounts exist, and say what the test with a real Prometheus checks
    root = Path(__file__).parents[2]
    mounts = {v.split(":")[1]: Path(v.split(":")[0]) for s in ("prometheus", "grafana")
              for v in services[s]["volumes"] if v.startswith("/")}
    prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    jobs = {c["job_name"]: c for c in prometheus["scrape_configs"]}
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["workers"]["dns_sd_configs"][0]["names"] == ["worker", "worker-cpu"]
    assert jobs["workers"]["dns_sd_configs"][0]["port"] == 9808
    assert jobs["torchserve"]["static_configs"][0]["targets"] == ["torchserve:8082"]
    assert "metrics_mode=prometheus" in (root / "docker/torchserve.properties").read_text()
    assert services["torchserve"]["environment"]["GOMP_SPINCOUNT"] == str(WORKER_OMP_SPINCOUNT)
    dashboards = mounts["/var/lib/grafana/dashboards"]
    board = json.loads((dashboards / "mec.json").read_text())
    titles = {p["title"] for p in board["panels"]}
    assert {"Queue depth", "Jobs by status", "API requests by route and status",
            "API latency p50 / p99 by route", "TorchServe latency per request",
            "TorchServe queue time per request", "Worker memory (RSS)",
            "GPU utilisation"} <= titles
    provisioning = mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in board["panels"]} == \
        {source["datasources"][0]["uid"]}
    provider = yaml.safe_load((provisioning / "dashboards/mec.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose__ray_profile_a_head_and_gpu_nodes_the_workers_pointed_at_it(monkeypatch):
    monkeypatch.delenv("MEC_RAY_ADDRESS", raising=False)
    # without the head's address, no Ray cluster: jobs of several nodes are refused (422)
    for name in ("api", "worker"):
        assert config()["services"][name]["environment"]["MEC_RAY_ADDRESS"] == ""
    monkeypatch.setenv("MEC_RAY_ADDRESS", "ray-head:6379")
    monkeypatch.setenv("MEC_RAY_NODES", "3")
    done = subprocess.run(["docker-compose", "--profile", "ray", "config"],
                          capture_output=True, text=True, check=True)
    services = yaml.safe_load(done.stdout)["services"]
    head, node = services["ray-head"], services["ray-worker"]
    assert head["profiles"] == node["profiles"] == ["ray"]
    assert {"--head", "--port=6379", "--num-gpus=0", "--block"} <= set(head["command"])
    assert "--address=ray-head:6379" in node["command"] and node["deploy"]["replicas"] == 3
    gpu = node["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and str(gpu["count"]) == "1"
    for name in ("api", "worker"):
        assert services[name]["environment"]["MEC_RAY_ADDRESS"] == "ray-head:6379"
    # the worker joins the cluster (a run's driver needs a node on its host), its image
    # and the nodes' one and the same, with the ray extra
    assert "ray start --address=" in services["worker"]["command"][-1]
    assert head["image"] == node["image"] == services["worker"]["image"]
    assert services["worker"]["build"]["args"] == {"EXTRAS": "ray"}
    for name in ("ray-head", "ray-worker"):  # no disk shared with the workers: the store
        assert [v.split(":")[1] for v in services[name]["volumes"]] == ["/datasets"]


def test_every_image_copies_every_package_it_installs():
    """`pip install ./client .` in an image needs the client and all five packages copied
    in (pyproject's package list); a missing COPY builds an image that fails at import."""
    root = Path(__file__).resolve().parents[2]
    for dockerfile in (root / "docker").glob("*.Dockerfile"):
        copied = {line.split()[1] for line in dockerfile.read_text().splitlines()
                  if line.startswith("COPY ")}
        assert {"client", "mec_core", "mec_platform", "api", "worker", "serving"} <= copied, \
            dockerfile.name
