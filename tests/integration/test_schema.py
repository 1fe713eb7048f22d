"""Property-based requests from our own OpenAPI schema (schemathesis), with a valid key,
against the real API process: no 5xx, and every response matches what the schema says
(status code, content type, body). No worker runs: generated jobs only wait in the queue."""

import pytest
import schemathesis
from harness import base_env, open_platform
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


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


# the same document the API serves at /openapi.json
schema = schemathesis.openapi.from_dict(app.openapi())


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route__no_5xx_and_responses_match_the_schema(case, api_only):
    case.call_and_validate(base_url=api_only.url, checks=CHECKS,
                           headers={"Authorization": f"Bearer {api_only.key}"})
