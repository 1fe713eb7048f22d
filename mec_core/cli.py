"""The `mec` command line. Training options are generated from TrainConfig's fields, so the
CLI, the REST job spec and the worker share one description of a run."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
import typing
from pathlib import Path

import click
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from mec_core.config import BACKBONES, DATASETS, TrainConfig

# `--order none`: set a field whose default is not None to None; an object of its own, so
# that a choice called "none" (`--teacher none`) stays that choice
NONE = object()


class _OrNone(click.ParamType):
    """A number, or 'none' for a field whose default is not None but that accepts None."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.name = f"{kind.__name__.upper()}|none"

    def convert(self, value, param, ctx):
        if value is NONE or isinstance(value, str) and value.lower() in ("none", "null"):
            return NONE
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'} "
                      "or 'none'", param, ctx)


def _click_type(annotation, default=None) -> tuple[object, bool]:
    """(click type, is_flag) for a field annotation such as `int | None` or a Literal."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        if args[0] in (int, float) and default is not None:  # None means something
            return _OrNone(args[0]), False
        return _click_type(args[0])
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if annotation is bool:
        return bool, True
    return annotation, False


def config_options(func):
    """Decorate a click command with one option per TrainConfig field."""
    for name, info in reversed(list(TrainConfig.model_fields.items())):
        func = _option(name, info)(func)
    return func


def _option(name: str, info: FieldInfo):
    kind, is_flag = _click_type(info.annotation, info.default)
    flag = "--" + name.replace("_", "-")
    default = info.default
    shown = "auto" if default is None else default
    help_text = f"{info.description} [default: {shown}]"
    if is_flag:
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None,
                            help=help_text)
    return click.option(flag, name, type=kind, default=None, help=help_text)


def given_options(values: dict) -> dict:
    """The config options set on the command line (`none` meaning None); unset ones left out,
    so that the model's (or the server's recipe's) defaults apply."""
    return {k: None if v is NONE else v for k, v in values.items() if v is not None}


def make_config(values: dict) -> TrainConfig:
    """TrainConfig from CLI values (unset options keep the model's defaults)."""
    given = given_options(values)
    try:
        return TrainConfig(**given)
    except ValidationError as exc:
        problems = "; ".join(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise click.UsageError(problems) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Self-supervised pretraining with Maximum Entropy Coding (MEC, NeurIPS 2022)."""


@main.command()
@config_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoints/ and metrics.jsonl are written here.")
@click.option("--resume/--no-resume", default=True,
              help="Continue from the newest checkpoint in --out. [default: resume]")
def train(out_dir: str, resume: bool, **values) -> None:
    """Pretrain an encoder with MEC; shows progress, writes metrics.jsonl and checkpoints."""
    from mec_core.progress import RichProgress
    from mec_core.train import TrainingDiverged
    from mec_core.train import train as run

    config = make_config(values)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "config.json").write_text(config.model_dump_json(indent=2))
    try:
        with RichProgress(config.method) as progress:
            result = run(config, out_dir, progress, resume=resume)
    except (TrainingDiverged, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    summary = {"steps": result.steps, "checkpoint": str(result.checkpoint),
               "images_per_sec": round(result.images_per_sec, 1),
               **{k: round(v, 5) for k, v in result.last.items() if k != "images_per_sec"}}
    click.echo(json.dumps(summary))


@main.group(name="eval")
def eval_group() -> None:
    """Evaluate frozen features: weighted kNN or a linear probe."""


def _eval_options(func):
    """Options shared by `mec eval knn` and `mec eval linear`."""
    options = [
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="Training checkpoint whose student backbone is evaluated."),
        click.option("--random-init", is_flag=True,
                     help="Evaluate --backbone untrained: the baseline to compare with."),
        click.option("--raw-pixels", is_flag=True, help="Use the normalized pixels as features."),
        click.option("--backbone", type=click.Choice(list(BACKBONES)), default=None,
                     help="Backbone for --random-init."),
        click.option("--dataset", required=True, type=click.Choice(list(DATASETS)),
                     help="Dataset (its train and test splits)."),
        click.option("--data-dir", default=None, help="Dataset directory [default: standard]."),
        click.option("--image-size", "size", type=int, default=None,
                     help="Input size for --random-init/--raw-pixels [default: native]."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
        click.option("--train-limit", type=int, default=None, help="Use the first N train images."),
        click.option("--test-limit", type=int, default=None, help="Use the first N test images."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_eval(protocol: str, checkpoint: str | None, random_init: bool, raw_pixels: bool,
              backbone: str | None, **kwargs) -> None:
    from mec_core.data import DatasetError
    from mec_core.evaluate import evaluate

    if random_init != (backbone is not None):
        raise click.UsageError("--random-init and --backbone go together")
    if sum([checkpoint is not None, random_init, raw_pixels]) != 1:
        raise click.UsageError("give exactly one of --checkpoint, --random-init, --raw-pixels")
    try:
        result = evaluate(protocol, checkpoint_path=checkpoint, backbone=backbone,
                          pixels=raw_pixels, **kwargs)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                           for k, v in result.items()}))


@eval_group.command()
@_eval_options
@click.option("--k", type=int, default=200, show_default=True, help="Neighbours that vote.")
@click.option("--temperature", type=float, default=0.1, show_default=True,
              help="Temperature T of the votes exp(sim / T).")
def knn(**kwargs) -> None:
    """Weighted kNN (cosine) on frozen features; prints JSON with top1 and top5."""
    _run_eval("knn", **kwargs)


@eval_group.command()
@_eval_options
@click.option("--steps", type=int, default=100, show_default=True,
              help="L-BFGS iterations of the logistic-regression probe.")
def linear(**kwargs) -> None:
    """Linear probe on frozen features; prints JSON with top1 and top5."""
    _run_eval("linear", **kwargs)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Training checkpoint to export.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for backbone.pt, encoder.pt and model.json; with --format onnx, "
              "a Triton model repository (NAME/1/model.onnx, NAME/config.pbtxt).")
@click.option("--format", "fmt", type=click.Choice(["torch", "onnx"]), default="torch",
              show_default=True, help="onnx: uint8 images in, l2-normalised embeddings out, "
              "dynamic batch axis (ONNX Runtime, Triton's ONNX backend).")
@click.option("--name", default="mec", show_default=True, help="The ONNX model's name.")
@click.option("--projector", is_flag=True, help="ONNX: the projector's outputs, not the "
              "backbone's features.")
def export(checkpoint: str, out_dir: str, fmt: str, name: str, projector: bool) -> None:
    """Export the student encoder: backbone in torchvision's format plus the projector, or
    an ONNX graph of the embeddings."""
    from mec_core.export import export as run

    try:
        if fmt == "onnx":
            from mec_core.onnx_export import triton_repository

            if importlib.util.find_spec("onnxscript") is None:
                raise click.ClickException("--format onnx needs the onnx extra: pip install "
                                           "'mec-platform[onnx]'")
            model_dir = triton_repository(checkpoint, out_dir, name, projector)
            paths = {"onnx": model_dir / "1" / "model.onnx",
                     "triton_config": model_dir / "config.pbtxt"}
        else:
            paths = run(checkpoint, out_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    sys.exit(main())
