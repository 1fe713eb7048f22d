"""The contract: requests generated from our own OpenAPI document (schemathesis), with a
valid key, against the real API process, in all four phases (examples, coverage, fuzzing,
stateful) and with every check: no 5xx; every status, header, content type and body as
the document says; what it calls valid accepted and what it calls invalid refused; other
methods 405; the links it declares hold. What a schema cannot say is written down in
schemathesis.toml, which `schemathesis run` reads too. No worker runs: generated jobs
only wait in the queue.

The default run generates a few cases per operation and phase (QUICK); `make test-slow`
runs the thorough one."""

from pathlib import Path

import pytest
import schema_hooks  # noqa: F401  (registers the NDJSON serializer)
import schemathesis
from harness import base_env, open_platform
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig

from api.main import app

CONFIG = (Path(__file__).parents[2] / "schemathesis.toml").read_text()
QUICK, THOROUGH = 2, 30  # generated cases per operation in the fuzzing and stateful phases


@pytest.fixture(scope="module")
def api_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    env = base_env(root) | {"MEC_SUBMIT_RATE_PER_MINUTE": "100000",
                            "MEC_SUBMIT_BURST": "100000"}
    plat = open_platform(root, env, "embedded")
    try:
        plat.start_api()
        yield plat
    finally:
        plat.stop()


def _schema():
    """The document the API serves at /openapi.json, with schemathesis.toml."""
    return schemathesis.openapi.from_dict(app.openapi(),
                                          config=SchemathesisConfig.from_str(CONFIG))


quick, thorough = _schema(), _schema()


def _aim(schema, platform) -> str:
    """Requests carry the platform's key as `-H` adds it (a negative case may still leave
    it out); returns the API's URL."""
    schema.config.update(headers={"Authorization": f"Bearer {platform.key}"})
    return platform.url


@quick.parametrize()
@settings(max_examples=QUICK, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route__all_checks(case, api_only):
    case.call_and_validate(base_url=_aim(quick, api_only))


@pytest.mark.slow
@thorough.parametrize()
@settings(max_examples=THOROUGH, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route__all_checks__thorough(case, api_only):
    case.call_and_validate(base_url=_aim(thorough, api_only))


@pytest.mark.parametrize("schema, examples", [
    (quick, QUICK), pytest.param(thorough, THOROUGH, marks=pytest.mark.slow)])
def test_links__each_holds(api_only, schema, examples):
    url = _aim(schema, api_only)

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": url, "headers": {"Authorization": f"Bearer {api_only.key}"}}

    # generated only: a replay (shrinking) meets a server whose state has moved on
    Workflow.run(settings=settings(max_examples=examples, stateful_step_count=4,
                                   phases=[Phase.generate], database=None, deadline=None,
                                   suppress_health_check=list(HealthCheck)))
