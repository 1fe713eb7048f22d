"""The one rule for a path that a request, a sweep's trial or an uploaded checkpoint
names: it must be text a file system can hold (UTF-8, no NUL byte) and lie, once its
symlinks and '..' are resolved, under one of the data roots (MEC_DATA_ROOTS, and
data_dir/datasets)."""

from __future__ import annotations

from pathlib import Path

from mec_core.config import TrainConfig
from mec_platform.specs import EvaluateSpec, SweepSpec


def check(value: str | None, field: str, roots: list[Path]) -> None:
    """Raise ValueError naming `field` unless `value` (None: unset) obeys the rule."""
    if value is None or value.startswith("dataset://"):  # not a path: see datasets.resolve
        return
    if "\0" in value:
        raise ValueError(f"{field}: contains a NUL byte")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{field}: not valid UTF-8") from None
    if root_of(value, roots) is None:
        raise ValueError(f"{field}: {value} is outside the data roots "
                         f"({', '.join(map(str, roots))}; see MEC_DATA_ROOTS)")


def root_of(value: str, roots: list[Path]) -> Path | None:
    """The data root `value` lies under once its symlinks and '..' are resolved, or None."""
    resolved = Path(value).resolve()
    return next((root for root in roots if resolved == root or root in resolved.parents), None)


def is_path_field(name: str) -> bool:
    """Whether a spec's field names a path on the workers' disks."""
    return name.endswith("data_dir")


PRETRAIN_PATHS = [n for n in TrainConfig.model_fields if is_path_field(n)]
EVALUATE_PATHS = [n for n in EvaluateSpec.model_fields if is_path_field(n)]


def check_sweep(spec: SweepSpec, roots: list[Path]) -> None:
    """Every path a trial of the sweep can get: the base's, each value the space can give
    it, and the evaluation's of each trial."""
    for name in PRETRAIN_PATHS:
        check(spec.base.get(name), f"config.base.{name}", roots)
        if name in spec.space:
            for value in spec.space[name].extremes():  # str or None: a valid TrainConfig's
                check(value, f"config.space.{name}", roots)
    for name in EVALUATE_PATHS:
        check((spec.objective.evaluation or {}).get(name),
              f"config.objective.evaluation.{name}", roots)
