"""The one path rule on every path-like field of every JSON body the API takes, found by
walking the OpenAPI document (and, for a sweep's free-form base, space and evaluation, the
schemas of the pretrain and evaluate configs): a new field that names a path and skips
the rule fails here."""

from __future__ import annotations

import json
import re

import pytest

from api.main import app
from mec_core.config import TrainConfig
from mec_platform.settings import get_settings
from mec_platform.specs import EvaluateSpec

PATHLIKE = re.compile(r"(dir|path|folder|file|root)s?$", re.IGNORECASE)
TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "train_limit": 64, "max_steps": 2}


def _resolve(schema: dict, doc: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _path_fields(schema: dict, doc: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(variant, dotted field) of every path-like property under `schema`; the variant is
    the title of the oneOf/anyOf branch it is in."""
    schema = _resolve(schema, doc)
    found = []
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        title = _resolve(branch, doc).get("title", "")
        found += [(variant or title, f) for variant, f in _path_fields(branch, doc, prefix)]
    for name, sub in schema.get("properties", {}).items():
        if sub.get("deprecated"):  # an old name, renamed to its field before any check
            continue
        field = f"{prefix}{name}"
        if PATHLIKE.search(name):
            found.append(("", field))
        found += _path_fields(sub, doc, field + ".")
    return found


def _sweep_fields() -> list[tuple[str, str]]:
    """A sweep's paths: the base's and the space's (pretrain config fields) and the
    evaluation's (evaluate config fields)."""
    pretrain = [n for n in TrainConfig.model_json_schema()["properties"] if PATHLIKE.search(n)]
    evaluate = [n for n in EvaluateSpec.model_json_schema()["properties"]
                if PATHLIKE.search(n)]
    return ([("SweepJobCreate", f"config.base.{n}") for n in pretrain]
            + [("SweepJobCreate", f"config.space.{n}") for n in pretrain]
            + [("SweepJobCreate", f"config.objective.evaluation.{n}") for n in evaluate])


def _cases() -> list[tuple[str, str, str]]:
    doc = app.openapi()
    cases = []
    for route, operations in doc["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                cases += [(route, v, f) for v, f in
                          _path_fields(content["application/json"]["schema"], doc)]
    cases += [(route, v, f) for route in ("/v1/jobs", "/v1/jobs/validate")
              for v, f in _sweep_fields()]
    return sorted(set(cases))


def _set(body: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = {"choice": [value]} if parents[-1:] == ["space"] else value
    return body


def _body(route: str, variant: str, pretrain_id: int) -> dict:
    """A valid body of the route (and variant) to put one path into (of a dataset that
    reads a folder: digits and synthetic refuse one)."""
    folder = TINY | {"dataset": "imagefolder",
                     "data_dir": str(get_settings().allowed_data_roots[-1] / "inside")}
    bodies = {
        ("/v1/jobs", "PretrainJobCreate"): {"kind": "pretrain", "config": folder},
        ("/v1/jobs", "EvaluateJobCreate"): {"kind": "evaluate",
                                            "config": {"job_id": pretrain_id}},
        ("/v1/jobs", "SweepJobCreate"): {"kind": "sweep", "config": {
            "base": folder, "space": {"base_lr": {"choice": [0.1]}}, "max_trials": 1,
            "max_parallel": 1}},
        ("/v1/models/{model_id}/deploy", "DeploySpec"): {"workers": 1,
                                                         "reference_dataset": "imagefolder"},
    }
    bodies |= {("/v1/jobs/validate", v): body for (r, v), body in bodies.items()
               if r == "/v1/jobs"}  # what a submission takes, checked alike
    assert (route, variant) in bodies, f"{route} ({variant}) takes a path: add a body here"
    return json.loads(json.dumps(bodies[route, variant]))


def test_every_path_field_is_found():
    """The walk sees the fields known today (so it cannot pass by finding none)."""
    fields = {(route, field) for route, _, field in _cases()}
    assert {("/v1/jobs", "config.data_dir"), ("/v1/models/{model_id}/deploy",
                                               "reference_data_dir"),
            ("/v1/jobs", "config.space.data_dir"), ("/v1/jobs", "config.base.data_dir"),
            ("/v1/jobs", "config.objective.evaluation.data_dir")} <= fields


@pytest.mark.parametrize(("route", "variant", "field"), _cases())
def test_path_fields__outside_the_roots_nul_or_not_utf8_are_422_naming_the_field(
        client, synthetic_model, tmp_path, route, variant, field):
    root = get_settings().allowed_data_roots[-1]  # data_dir/datasets
    root.mkdir(parents=True, exist_ok=True)
    (root / "inside" / "a-class").mkdir(parents=True, exist_ok=True)  # an image folder
    link = root / "escape"
    if not link.is_symlink():
        link.symlink_to("/etc")
    pretrain_id, model_id = synthetic_model  # a job to evaluate, a model to deploy
    url = route.replace("{model_id}", str(model_id))
    bad = {"outside": "/etc", "dot-dot": f"{root}/../../../etc", "symlink": f"{link}/ssl",
           "NUL": f"{root}/a\0b", "not UTF-8": f"{root}/\ud800"}
    for what, value in bad.items():
        body = _set(_body(route, variant, pretrain_id), field, value)
        r = client.post(url, content=json.dumps(body), headers={
            "Content-Type": "application/json"})
        assert r.status_code == 422, f"{field} = {what}: {r.status_code} {r.text}"
        assert r.json()["detail"].startswith(field), f"{field} = {what}: {r.text}"
    ok = client.post(url, json=_set(_body(route, variant, pretrain_id), field,
                                    str(root / "inside")))
    assert ok.status_code in (200, 201, 202), f"{field} inside the roots: {ok.text}"
