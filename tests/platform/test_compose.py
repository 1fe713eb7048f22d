"""The shipped docker-compose.yml is valid and wired as documented (no engine runs here:
`docker-compose config` validates it offline)."""

import shutil
import subprocess

import pytest
import yaml

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose is not installed (.ci/run installs it)")


def config(*profiles: str) -> dict:
    args = ["docker-compose"] + [a for p in profiles for a in ("--profile", p)] + ["config"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return yaml.safe_load(done.stdout)


def test_compose__services_health_checks_and_profiles():
    default, with_cpu = config(), config("cpu")
    assert set(default["services"]) == {"postgres", "redis", "api", "worker", "torchserve"}
    assert "worker-cpu" in with_cpu["services"]
    for name in ("postgres", "redis", "api", "torchserve"):
        assert "healthcheck" in default["services"][name] or name == "api"
        assert default["services"][name]["restart"] == "unless-stopped"
    gpu = default["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert default["services"]["postgres"]["volumes"][0]["target"] == "/var/lib/postgresql/data"
    published = {p["target"] for s in default["services"].values() for p in s.get("ports", [])}
    assert published == {8000, 8080}  # TorchServe management (8081) stays internal
    env = default["services"]["worker"]["environment"]
    assert env["MEC_BROKER_URL"].startswith("redis://")
    assert env["MEC_DATABASE_URL"].startswith("postgresql+psycopg://")
