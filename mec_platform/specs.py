"""The specs of the platform's own jobs (evaluation, deployment, sweep), read by the API
and the worker, and the record of a model's deployment. A pretraining job's spec is
mec_core's TrainConfig."""

from __future__ import annotations

import itertools
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from mec_core.config import DatasetName, TrainConfig
from serving.client import MAX_BATCH_DELAY_MS

ID_MAX = 2**31 - 1  # ids, steps and offsets are PostgreSQL INTEGER columns


def coerced(exc: ValidationError) -> dict | None:
    """The first error of a strict validation (of JSON) that is a value of another JSON
    type than the schema says, e.g. true or "5" for an integer: not 642.0 (JSON Schema's
    integer includes it), nor a string JSON cannot carry back (a lone surrogate, which the
    path rule names)."""
    def other_type(error: dict) -> bool:
        integral = isinstance(error["input"], float) and error["input"].is_integer()
        return error["type"] != "json_invalid" and not (
            error["type"] in ("int_type", "int_from_float") and integral)
    return next((e for e in exc.errors() if other_type(e)), None)


def renamed(names: dict[str, str]):
    """Old field names ({old: new}) still accepted in input, so that stored job configs
    and users' files keep working: a model's before-validator, and its schema's extra
    (each old name shown as a deprecated property, not to be given with the new one)."""
    def rename(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, new in names.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old}: the old name of {new}; give {new} only")
                data = {new if k == old else k: v for k, v in data.items()}
        return data

    def schema(document: JsonDict) -> None:
        properties = document["properties"]
        for old, new in names.items():
            properties[old] = {k: v for k, v in properties[new].items() if k != "title"} | {
                "deprecated": True,
                "description": f"Deprecated: the old name of `{new}`."}
        document["allOf"] = [{"not": {"required": [old, new]}}  # one name or the other
                             for old, new in names.items()]
    return model_validator(mode="before")(classmethod(rename)), schema


class EvaluateSpec(BaseModel):
    """Frozen-feature evaluation of a finished pretraining job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    job_id: int = Field(ge=1, le=ID_MAX, description="The succeeded pretraining (or import) "
                        "job whose model to evaluate.")
    protocol: Literal["knn", "linear"] = Field("knn", description="Weighted kNN or linear probe.")
    dataset: DatasetName | None = Field(None, description="Default: the job's training set.")
    data_dir: str | None = Field(None, max_length=1000, description="Dataset directory.")
    k: int = Field(200, ge=1, le=10_000, description="kNN neighbours.")
    temperature: float = Field(0.1, gt=0, le=10.0, description="kNN vote temperature.")
    steps: int = Field(100, ge=1, le=10_000, description="L-BFGS iterations of the probe.")
    train_limit: int | None = Field(None, ge=1, le=ID_MAX,
                                    description="Use the first N train images.")
    test_limit: int | None = Field(None, ge=1, le=ID_MAX,
                                   description="Use the first N test images.")


_OLD_DEPLOY_NAMES, _deprecated_deploy_names = renamed({
    "gallery_dataset": "reference_dataset", "gallery_data_dir": "reference_data_dir",
    "gallery_split": "reference_split", "gallery_limit": "reference_limit"})


class DeploySpec(BaseModel):
    """How to serve a model with TorchServe. Its `/search` endpoint finds neighbours in a
    reference set: labelled images embedded at deploy time (apps' own collections are
    galleries, /v1/galleries)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra=_deprecated_deploy_names)
    _old_names = _OLD_DEPLOY_NAMES

    workers: int | None = Field(None, ge=1, le=16, description="TorchServe workers per "
                                "endpoint; default: one per core up to 4 on a CPU host (each "
                                "with a share of the cores), one on a GPU host.")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch threads of "
                                      "each worker; default: the cores divided among the "
                                      "workers.")
    batch_size: int | None = Field(None, ge=1, le=256, description="Largest dynamic batch "
                                   "of each worker; default: 8 images in flight over all "
                                   "the workers (4 each for 2 workers).")
    max_batch_delay_ms: int = Field(MAX_BATCH_DELAY_MS, ge=0, le=10_000, description=
                                    "How long a batch waits for more requests: TorchServe "
                                    "takes what is queued at once, then, while another "
                                    "worker computes, waits up to this long for more; a "
                                    "request that comes while every other worker is idle "
                                    "leaves at once.")
    reference_dataset: DatasetName | None = Field(None, description="The reference set "
                                                  "/search looks in; default: the model's "
                                                  "training set.")
    reference_data_dir: str | None = Field(None, max_length=1000)
    reference_split: Literal["train", "test"] = "train"
    reference_limit: int | None = Field(None, ge=1, le=ID_MAX,
                                        description="First N reference images only.")
    drain_seconds: float = Field(5.0, ge=0, le=600, description="On re-deploy, how long the "
                                 "old version keeps finishing its queued requests after the "
                                 "new one takes the traffic.")


class UndeploySpec(BaseModel):
    """An undeploy has no options: it stops every version of the model. A body with a
    field (a version, say) is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


SERVING, UNDEPLOYED, LOST = "serving", "undeployed", "lost"  # LOST: its archive is gone


class Deployment(BaseModel):
    """A model's deployment as the database records it (models.deployment, JSON read and
    written through this type only): written whole by the deploy task, marked lost by
    a restore that finds its archive gone."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # "version": TorchServe's, dropped

    status: Literal["serving", "undeployed", "lost"]
    number: int = Field(0, description="1, 2, ... as the model is redeployed: the one "
                        "version users see (answers' and galleries' model_version).")
    name: str | None = Field(None, description="TorchServe's endpoint of the embeddings; "
                             "the reference set's is `{name}-knn`.")
    urls: dict[str, str] | None = None
    workers: int | None = None
    torch_threads: int | None = None
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    reference_images: str | None = Field(None, description="The reference set's pixels, for "
                                         "showing search results.")
    dim: int | None = Field(None, description="The embeddings' width (none: deployed before "
                            "galleries existed).")
    reason: str | None = Field(None, description="Why it was lost.")
    reference_reused_from: int | None = Field(
        None, description="The evaluation job whose features of the same images the "
        "reference set reused instead of embedding them (none: embedded by the deploy).")
    _old_names = renamed({"gallery_images": "reference_images"})[0]

    @property
    def serving(self) -> bool:
        return self.status == SERVING

    @property
    def torchserve_version(self) -> str:
        """TorchServe's name of this version; never shown to users."""
        return f"{self.number}.0"

    def endpoints(self) -> list[str]:
        """The TorchServe endpoints: the embeddings and the reference set's kNN."""
        return [self.name, f"{self.name}-knn"]

    def public(self) -> dict[str, Any]:
        """What users see (a model's `deployment`, a deploy job's result): the record, and
        `reference_images` also as `gallery_images`, its deprecated old name."""
        shown = self.model_dump(mode="json", exclude_none=True)
        return shown | ({"gallery_images": self.reference_images}
                        if self.reference_images else {})


class Distribution(BaseModel):
    """One field's values: {"choice": [...]}, {"uniform": [low, high]},
    {"loguniform": [low, high]} or {"int": [low, high]} (bounds included, in either
    order)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True,
                              serialize_by_alias=True)

    choice: list[Any] | None = Field(None, min_length=1, max_length=100)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")

    @field_validator("uniform", "loguniform", "int_")
    @classmethod
    def _ordered(cls, bounds: tuple | None) -> tuple | None:
        return tuple(sorted(bounds)) if bounds is not None else None

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("choice", "uniform", "loguniform", "int_") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, int")
        low, _ = self.bounds or (1, 1)
        if self.loguniform is not None and low <= 0:
            raise ValueError(f"loguniform needs a positive low bound, got {low}")
        return self

    @property
    def bounds(self) -> tuple[float, float] | None:
        return self.uniform or self.loguniform or self.int_

    def extremes(self) -> list[Any]:
        """The values that must all be valid for the field."""
        return list(self.choice) if self.choice is not None else list(self.bounds)


_OLD_OBJECTIVE_NAMES, _deprecated_objective_names = renamed({"direction": "mode"})


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_deprecated_objective_names)
    _old_names = _OLD_OBJECTIVE_NAMES

    metric: str = Field("knn_top1", min_length=1, max_length=64, description="A metric the "
                        "trials log (e.g. knn_top1, loss); its last value scores a trial.")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or a lower "
                                        "value of the metric is better.")
    evaluation: dict[str, Any] | None = Field(
        None, description="An evaluation job run on each finished trial's model (the fields "
        "of an evaluate job but job_id, e.g. {\"protocol\": \"knn\"}): its top-1 then "
        "ranks the trials, higher being better, and metric and mode only drive pruning.")

    @property
    def rank_mode(self) -> Literal["max", "min"]:
        """The mode trials are ranked in: the evaluation's top-1 is better higher (max),
        else the metric's mode."""
        return "max" if self.evaluation is not None else self.mode

    def evaluation_of(self, job_id: int) -> EvaluateSpec:
        return EvaluateSpec(**(self.evaluation or {}) | {"job_id": job_id})


def _sweep_schema(schema: JsonDict) -> None:
    """The rules of a sweep that a schema can say: `base` is a pretrain config, `space`
    names fields of it, each with exactly one distribution of its values; a grid takes
    choices only."""
    fields = TrainConfig.model_json_schema()["properties"]
    schema["properties"]["base"] = {"type": "object", "properties": fields,
                                    "additionalProperties": False,
                                    "description": "The pretrain config every trial "
                                    "starts from."}
    bounds = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    kinds = {"choice": {"type": "array", "minItems": 1, "maxItems": 100},
             "uniform": bounds, "int": bounds | {"items": {"type": "integer"}},
             "loguniform": bounds | {"items": {"type": "number", "exclusiveMinimum": 0}}}
    schema["properties"]["space"] = {
        k: v for k, v in schema["properties"]["space"].items() if k != "additionalProperties"
    } | {"propertyNames": {"enum": list(fields)}, "additionalProperties": {"oneOf": [
        {"type": "object", "properties": {kind: value}, "required": [kind],
         "additionalProperties": False} for kind, value in kinds.items()]}}
    schema["if"] = {"properties": {"algorithm": {"const": "grid"}}, "required": ["algorithm"]}
    schema["then"] = {"properties": {"space": {"patternProperties": {
        "": {"required": ["choice"]}}}}}


class SweepSpec(BaseModel):
    """Pretraining trials over a search space of the pretrain config's fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_sweep_schema)

    base: dict[str, Any] = Field(description="The pretrain config every trial starts from.")
    space: dict[str, Distribution] = Field(min_length=1, max_length=20, description="Field "
                                           "-> values to search.")
    algorithm: Literal["grid", "random", "tpe"] = Field("tpe", description="grid: every "
                                                        "combination of choices; random and "
                                                        "tpe: Optuna's samplers.")
    objective: Objective = Objective()
    max_trials: int = Field(10, ge=1, le=1000)
    max_parallel: int = Field(2, ge=1, le=64, description="Trials queued or running at once.")
    prune: bool = Field(True, description="Stop trials whose objective is not in the best "
                        "third at a third and a ninth of their steps (successive halving).")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _valid_trials(self) -> SweepSpec:
        """Every value the space can give makes a valid pretrain config with the base: the
        error names the field (space.eps_sq: ...)."""
        try:
            TrainConfig(**self.base)
        except ValidationError as exc:
            raise ValueError(f"base: {_first(exc)}") from None
        try:  # and in the JSON types the schema gives (no true for an integer)
            TrainConfig.model_validate_json(json.dumps(self.base), strict=True)
        except ValidationError as exc:
            if (error := coerced(exc)) is not None:
                field = ".".join(map(str, error["loc"]))
                raise ValueError(f"base.{field}: {error['msg']}") from None
        if self.objective.evaluation is not None:
            if "job_id" in self.objective.evaluation:
                raise ValueError("objective.evaluation.job_id: set by the sweep, one per trial")
            try:
                self.objective.evaluation_of(1)
            except ValidationError as exc:
                raise ValueError(f"objective.evaluation.{_first(exc)}") from None
        for field, dist in self.space.items():
            if field not in TrainConfig.model_fields:
                raise ValueError(f"space.{field}: not a field of the pretrain config")
            if self.algorithm == "grid" and dist.choice is None:
                raise ValueError(f"space.{field}: a grid needs a list of choices")
            for value in dist.extremes():
                try:
                    TrainConfig(**self.base | {field: value})
                except ValidationError as exc:
                    raise ValueError(f"space.{field}: {value!r}: {_first(exc)}") from None
        return self

    def grid(self) -> list[dict[str, Any]]:
        names = list(self.space)
        return [dict(zip(names, values)) for values in
                itertools.product(*(self.space[n].choice for n in names))]


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc'])) or 'config'}: {error['msg']}"
