"""The `mec` command: the client commands (`mec login`, `mec jobs …`, `mec models …`,
`mec search`, `mec gallery …`) through mec_client.Client, and the commands other installed
distributions declare as "mec.commands" entry points (the platform's train, up, keys, ...),
each imported only when it is run."""

from __future__ import annotations

import json
import os
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from mec_client.client import APIError, Client
from mec_client.enums import FINISHED, JobKind, JobStatus, Queue
from mec_client.login import DEFAULT_URL, save_login, stack_url
from mec_client.models import JobPublic
from mec_client.transport import TransportError

# Piped into a file or another command, rich would cut tables to 80 columns: lines are
# kept whole there (up to 200 columns) unless COLUMNS says otherwise.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
as_json = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
COLOURS = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red",
           "cancelled": "magenta"}


class _Commands(click.Group):
    """The client's own commands, then those that installed distributions declare as
    "mec.commands" entry points (each imported only when it is run, or listed by --help)."""

    @staticmethod
    def _declared() -> dict:
        return {point.name: point for point in entry_points(group="mec.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._declared()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and (point := self._declared().get(name)) is not None:
            command = point.load()
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Self-supervised pretraining with Maximum Entropy Coding (MEC, NeurIPS 2022): the
    platform's client, and with the platform installed, its own commands."""


def _client() -> Client:
    try:
        return Client()
    except APIError as exc:
        raise click.ClickException(exc.detail) from None


def _api(call, *args, **kw):
    """Run a client call; the API's errors and an unreachable API become CLI messages."""
    try:
        return call(*args, **kw)
    except APIError as exc:
        raise click.ClickException(f"the API answered {exc.status}: {exc.detail}") from None
    except TransportError as exc:
        raise click.ClickException(f"cannot reach the API ({exc}); is MEC_API_URL right?") \
            from None


def _echo_json(value: BaseModel | list | dict) -> None:
    if isinstance(value, BaseModel):
        click.echo(value.model_dump_json(indent=2))
    else:
        click.echo(json.dumps(value, indent=2, default=str))


def _status(status: str) -> str:
    return f"[{COLOURS.get(status, 'white')}]{status}[/]"


@main.command()
@click.option("--url", help="The API's address [default: MEC_API_URL, else the API that "
              "`mec up` left running in MEC_DATA_DIR (./mec-data), else "
              f"{DEFAULT_URL}].")
@click.option("--key", prompt=True, hide_input=True, help="An API key (`mec keys create`).")
def login(url: str | None, key: str) -> None:
    """Check a key against the API and keep it (with the URL) for later commands."""
    url = url or os.environ.get("MEC_API_URL") or stack_url() or DEFAULT_URL
    _api(Client(url, key, retries=0).jobs, limit=1)
    path = save_login(url, key)
    click.echo(f"logged in to {url}; key kept in {path} (readable by you only)")


@main.group()
def jobs() -> None:
    """Submit, list, follow and cancel jobs on the platform (MEC_API_URL, MEC_API_KEY)."""


def _spec(spec_file: str | None, kind: str | None, name: str | None, tags: tuple[str, ...],
          priority: int | None, queue: str | None, values: dict[str, Any]) -> dict:
    """The job spec: the file's, then the flags on top of it."""
    spec: dict[str, Any] = {}
    if spec_file:
        text = sys.stdin.read() if spec_file == "-" else Path(spec_file).read_text()
        try:
            spec = yaml.safe_load(text) or {}  # YAML, and so JSON too
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"not YAML or JSON: {exc}", param_hint="-f") from None
        if not isinstance(spec, dict):
            raise click.BadParameter("the spec must be a mapping", param_hint="-f")
    spec["kind"] = kind or spec.get("kind", JobKind.PRETRAIN.value)
    spec["config"] = {**spec.get("config", {}), **values}
    for field, value in (("name", name), ("tags", list(tags) or None), ("priority", priority),
                         ("queue", queue)):
        if value is not None:
            spec[field] = value
    return spec


def _config_flags(args: list[str]) -> dict[str, Any]:
    """Config fields from `--batch-size 64 --order none --no-hflip --channels-last`: a flag
    with a value sets it (read as JSON where it is a number, true or false; `none` is null;
    else a string), a flag alone is true and `--no-NAME` false. The API checks the names
    and the values (a 422 names the field), so new fields need no new client."""
    config: dict[str, Any] = {}
    args = list(args)
    while args:
        flag = args.pop(0)
        if not flag.startswith("--") or flag == "--":
            raise click.UsageError(f"unexpected {flag!r}: config fields are given as "
                                   "--field-name VALUE")
        name, given, text = flag[2:].partition("=")
        if not given and args and not args[0].startswith("--"):
            text, given = args.pop(0), "="
        field = name.replace("-", "_")
        if given:
            config[field] = _value(text)
        elif field.startswith("no_"):
            config[field[3:]] = False
        else:
            config[field] = True
    return config


def _value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        return json.loads(text.lower() if text.lower() in ("true", "false") else text)
    except ValueError:
        return text


@jobs.command("submit", context_settings={"ignore_unknown_options": True,
                                          "allow_extra_args": True},
              epilog="Config fields: any field of a pretraining config (`mec train --help` "
              "with the platform installed, or the API's /docs) as --field-name VALUE, "
              "e.g. --dataset fashion-mnist --backbone convnet --epochs 2 --no-hflip.")
@click.option("-f", "--file", "spec_file", help="A job spec in YAML or JSON (the body of POST "
              "/v1/jobs; '-' reads stdin); flags override its fields.")
@click.option("--kind", type=click.Choice([JobKind.PRETRAIN.value, JobKind.EVALUATE.value]),
              help="[default: the file's, else pretrain]")
@click.option("--name", help="The job's name.")
@click.option("--tag", "tags", multiple=True, help="A label (repeat for several).")
@click.option("--priority", type=click.IntRange(0, 9), help="9 = most urgent.")
@click.option("--queue", type=click.Choice([q.value for q in Queue]))
@click.option("--watch", is_flag=True, help="Follow the job until it finishes.")
@as_json
@click.pass_context
def jobs_submit(ctx, spec_file, kind, name, tags, priority, queue, watch, as_json) -> None:
    """Submit a job: config fields as flags (--epochs 2), or a spec file (-f spec.yaml)."""
    spec = _spec(spec_file, kind, name, tags, priority, queue, _config_flags(ctx.args))
    client = _client()
    job = _api(client.submit, spec)
    if as_json and not watch:
        return _echo_json(job)
    if not as_json:
        console.print(f"job {job.id} submitted ({job.kind}, {_status(job.status)})")
    if watch:
        _watch(client, job.id, as_json)


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--kind", type=click.Choice([k.value for k in JobKind]))
@click.option("--tag")
@click.option("--parent", "parent_id", type=int, help="A sweep's trials.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@as_json
def jobs_list(status, kind, tag, parent_id, limit, as_json) -> None:
    """The newest jobs, with status, progress and the latest loss and kNN."""
    page = _api(_client().jobs, status=status, kind=kind, tag=tag, parent_id=parent_id,
                limit=limit)
    if as_json:
        return _echo_json(page)
    table = Table("id", "kind", "name", "status", "progress", "loss", "knn top-1", "created",
                  title=f"{len(page.data)} of {page.count} jobs", title_justify="left")
    for j in page.data:
        metrics = j.last_metrics or {}
        knn = (j.result or {}).get("top1", metrics.get("knn_top1"))
        table.add_row(str(j.id), j.kind, j.name, _status(j.status),
                      f"{j.progress.percent:.0f} %", _num(metrics.get("loss")), _num(knn),
                      j.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


def _num(value) -> str:
    return "" if value is None else f"{value:.4g}"


@jobs.command("show")
@click.argument("job_id", type=int)
@as_json
def jobs_show(job_id: int, as_json: bool) -> None:
    """One job: status, progress, times, worker, the latest metrics, result or error."""
    job = _api(_client().job, job_id)
    if as_json:
        return _echo_json(job)
    table = Table(show_header=False, box=None, title=f"job {job.id} {job.name}",
                  title_justify="left")
    eta = f"{job.eta_seconds:.0f} s" if job.eta_seconds is not None else ""
    rows = [("kind", job.kind), ("status", _status(job.status)),
            ("waiting", f"[yellow]{job.waiting}[/]" if job.waiting else ""),
            ("progress", f"step {job.progress.step}/{job.progress.total_steps or '?'} "
                         f"({job.progress.percent:.1f} %) {eta}"),
            ("worker", f"{job.worker_host or ''} {job.device or ''}"),
            ("attempts", str(job.attempts)), ("created", str(job.created_at)),
            ("started", str(job.started_at or "")), ("finished", str(job.finished_at or "")),
            ("metrics", ", ".join(f"{k} {v:.4g}" for k, v in (job.last_metrics or {}).items())),
            ("result", json.dumps(job.result) if job.result else ""),
            ("error", f"[red]{job.error}[/]" if job.error else "")]
    for field, value in rows:
        if value.strip():
            table.add_row(f"[bold]{field}", value)
    console.print(table)


def _watch(client: Client, job_id: int, as_json: bool,
           after: Callable[[JobPublic], None] | None = None) -> None:
    """A live progress bar with the latest metrics until the job finishes (not on a
    terminal: a line each time they change), then `after(job)`; exit status 1 unless it
    succeeded."""
    if as_json:
        job = _api(client.wait, job_id)
        _echo_json(job)
    elif not console.is_terminal:  # a log or a pipe: one line per change, as it happens
        job = _api(client.wait, job_id, on_progress=_line_per_change(err=False))
        click.echo(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    else:
        columns = (TextColumn("job {task.fields[job]}"), BarColumn(),
                   TextColumn("{task.percentage:>5.1f} %"), TextColumn("{task.fields[left]}"),
                   TextColumn("{task.fields[status]} {task.fields[metrics]}"))
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("", total=100, job=job_id, status="", metrics="", left="")

            def show(j) -> None:
                shown = {k: v for k, v in (j.last_metrics or {}).items()
                         if k in ("loss", "coding_length", "knn_top1", "lr")}
                bar.update(task, completed=j.progress.percent, status=_status(j.status),
                           left=_left(j.eta_seconds),
                           metrics="  ".join(f"{k} {v:.4g}" for k, v in shown.items()))

            job = _api(client.wait, job_id, on_progress=show)
        console.print(f"job {job.id} {_status(job.status)}" +
                      (f": {job.error}" if job.error else ""))
    if after is not None:
        after(job)
    if job.status != JobStatus.SUCCEEDED:
        sys.exit(1)


def _line_per_change(err: bool) -> Callable[[JobPublic], None]:
    """An on_progress that prints the job's progress line each time it changes."""
    said = [""]

    def say(job: JobPublic) -> None:
        if (line := _progress_line(job)) != said[0]:
            click.echo(line, err=err)
            said[0] = line
    return say


def _left(seconds: float | None) -> str:
    """A running job's time left from the API's estimate (none before its first steps),
    rounded as honestly as a rate allows: as the dashboard says it."""
    if not seconds:
        return ""
    if seconds < 60:
        return "under a minute left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    tens = round(minutes / 10) * 10  # 2 h 10 min, not 2 h 7 min
    return f"about {tens // 60} h" + (f" {tens % 60} min" if tens % 60 else "") + " left"


def _progress_line(job: JobPublic) -> str:
    """A job's state in one line: status, step of total, percent, ETA, main metrics."""
    p = job.progress
    shown = {k: v for k, v in (job.last_metrics or {}).items()
             if k in ("loss", "coding_length", "knn_top1", "lr")}
    eta = f", {_left(job.eta_seconds)}" if job.eta_seconds else ""
    done = (f" {p.step}/{p.total_steps} reference images ready" if job.kind == JobKind.DEPLOY
            else f" {p.step}/{p.total_steps} images embedded" if job.kind == JobKind.EVALUATE
            else f" step {p.step}/{p.total_steps}")
    return (f"job {job.id} {job.status}" +
            (f": waiting: {job.waiting}" if job.waiting else "") +
            (f"{done} ({p.percent:.1f} %{eta})" if p.total_steps else "")
            + "".join(f" {k} {v:.4g}" for k, v in shown.items()))


@jobs.command("watch")
@click.argument("job_id", type=int)
@as_json
def jobs_watch(job_id: int, as_json: bool) -> None:
    """Follow a job until it finishes: progress bar and latest metrics."""
    _watch(_client(), job_id, as_json)


@jobs.command("cancel")
@click.argument("job_id", type=int)
@as_json
def jobs_cancel(job_id: int, as_json: bool) -> None:
    """Cancel a job: a queued one at once, a running one within seconds."""
    job = _api(_client().cancel, job_id)
    if as_json:
        return _echo_json(job)
    console.print(_cancel_line(job, "job"))


def _cancel_line(job: JobPublic, what: str) -> str:
    return (f"{what} {job.id}: {_status(job.status)}"
            + (" (cancel requested)" if job.status not in FINISHED else ""))


@jobs.command("metrics")
@click.argument("job_id", type=int)
@click.option("--name", "names", multiple=True, help="Only this series (repeat for several).")
@click.option("--max-points", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@as_json
def jobs_metrics(job_id: int, names: tuple[str, ...], max_points: int, as_json: bool) -> None:
    """A job's metric series: each one's points, first, last, min and max (--json: all)."""
    found = _api(_client().metrics, job_id, list(names) or None, max_points=max_points)
    if as_json:
        return _echo_json(found)
    table = Table("metric", "points", "first", "last", "min", "max",
                  title=f"job {job_id}, up to step {found.last_step} (every "
                        f"{found.stride} step)", title_justify="left")
    for name, s in sorted(found.series.items()):
        table.add_row(name, str(len(s.values)), _num(s.values[0]), _num(s.values[-1]),
                      _num(min(s.values)), _num(max(s.values)))
    console.print(table)


@jobs.command("evaluate")
@click.argument("job_id", type=int)
@click.option("--protocol", type=click.Choice(["knn", "linear"]), default="knn",
              show_default=True, help="Weighted kNN or a linear probe on frozen features.")
@click.option("--dataset", help="[default: the job's training set]")
@click.option("--data-dir", help="The dataset's directory.")
@click.option("--train-limit", type=click.IntRange(1), help="Use the first N train images.")
@click.option("--test-limit", type=click.IntRange(1), help="Use the first N test images.")
@click.option("--wait", "wait", is_flag=True, help="Follow it until it finishes.")
@as_json
def jobs_evaluate(job_id, protocol, dataset, data_dir, train_limit, test_limit, wait,
                  as_json) -> None:
    """Evaluate the encoder of finished pretraining job JOB_ID (an evaluate job)."""
    client = _client()
    given = {"dataset": dataset, "data_dir": data_dir, "train_limit": train_limit,
             "test_limit": test_limit}
    job = _api(client.evaluate, job_id, protocol,
               **{k: v for k, v in given.items() if v is not None})
    if as_json and not wait:
        return _echo_json(job)
    if not as_json:
        console.print(f"job {job.id} submitted ({protocol} evaluation of job {job_id}, "
                      f"{_status(job.status)})")
    if wait:
        _watch(client, job.id, as_json, None if as_json else _evaluation)


def _evaluation(job: JobPublic) -> None:
    result = job.result or {}
    if "top1" in result:
        console.print(f"top-1 {result['top1']:.2f} %, top-5 {result.get('top5', 0):.2f} %")


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job "
              "has finished.")
@click.option("--attempt", type=click.IntRange(1), help="Only this run of the job.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def jobs_logs(job_id: int, follow: bool, attempt: int | None, as_json: bool) -> None:
    """A job's own log lines: its trainer's, the worker's about it, its ranks', tracebacks."""
    lines = _client().logs(job_id, attempt=attempt, follow=follow)
    while (line := _api(next, lines, None)) is not None:
        click.echo(line.model_dump_json() if as_json else
                   f"{line.time:%H:%M:%S} [{line.attempt} {line.source}] {line.line}")


@main.group()
def models() -> None:
    """Finished encoders: list, deploy to TorchServe, undeploy."""


@models.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@as_json
def models_list(limit: int, as_json: bool) -> None:
    """Models with their best evaluation and where they are served."""
    page = _api(_client().models, limit=limit)
    if as_json:
        return _echo_json(page)
    table = Table("id", "job", "name", "backbone", "dataset", "best top-1", "served",
                  title=f"{len(page.data)} of {page.count} models", title_justify="left")
    for m in page.data:
        best = max((e.top1 for e in m.evaluations), default=None)
        served = (m.deployment or {}).get("status", "")
        table.add_row(str(m.id), str(m.job_id), m.name, m.backbone, m.dataset, _num(best),
                      served)
    console.print(table)


@models.command("deploy")
@click.argument("model_id", type=int)
@click.option("--workers", type=click.IntRange(1, 16), help="[default: one per core, up to 4]")
@click.option("--torch-threads", type=click.IntRange(1, 256),
              help="[default: the cores divided among the workers]")
@click.option("--batch-size", type=click.IntRange(1, 256))
@click.option("--max-batch-delay-ms", type=click.IntRange(0, 10_000))
@click.option("--reference-dataset", help="The reference set /search looks in "
              "[default: the model's training set].")
@click.option("--reference-data-dir", help="Its directory, or dataset://NAME[/VERSION].")
@click.option("--reference-split", type=click.Choice(["train", "test"]),
              help="[default: train]")
@click.option("--reference-limit", type=click.IntRange(1), help="Its first N images only.")
@click.option("--drain-seconds", type=click.FloatRange(0, 600), help="On a re-deploy, how "
              "long the old version finishes its queued requests [default: 5].")
@click.option("--wait", "wait", is_flag=True, help="Wait until it is served.")
@as_json
def models_deploy(model_id: int, wait: bool, as_json: bool, **given) -> None:
    """Serve a model with TorchServe (a deploy job)."""
    spec = {k: v for k, v in given.items() if v is not None}
    _deploy_job(_client(), "deploy", model_id, spec, wait, as_json)


@models.command("undeploy")
@click.argument("model_id", type=int)
@click.option("--wait", "wait", is_flag=True, help="Wait until it is no longer served.")
@as_json
def models_undeploy(model_id: int, wait: bool, as_json: bool) -> None:
    """Stop serving a model (an undeploy job)."""
    _deploy_job(_client(), "undeploy", model_id, {}, wait, as_json)


def _deploy_job(client: Client, action: str, model_id: int, spec: dict, wait: bool,
                as_json: bool) -> None:
    job = _api(client.deploy if action == "deploy" else client.undeploy, model_id, **spec)
    if wait:  # a line each time it moves on (beside --json's answer: on stderr)
        job = _api(client.wait, job.id, poll=1.0, on_progress=_line_per_change(err=as_json))
    if as_json:
        return _echo_json(job)
    reused = (job.result or {}).get("reference_reused_from")
    console.print(f"{action} job {job.id}: {_status(job.status)}"
                  + (f": {job.error}" if job.error else "")
                  + (f" (its reference set reused evaluation job {reused}'s features)"
                     if reused else ""))
    if wait and job.status != JobStatus.SUCCEEDED:
        sys.exit(1)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_id", type=int, required=True, help="A deployed model's id.")
@click.option("-k", "--k", type=click.IntRange(1, 100), default=10, show_default=True)
@as_json
def search(image: str, model_id: int, k: int, as_json: bool) -> None:
    """The nearest images of a deployed model's reference set to IMAGE, with their labels."""
    found = _api(_client().search, model_id, [Path(image).read_bytes()], k, vote=True)
    if as_json:
        return _echo_json(found)
    table = Table("rank", "item", "label", "score", title=f"{Path(image).name}: model "
                  f"{model_id} deployment {found.model_version}, majority label {found.vote[0]!r}",
                  title_justify="left")
    for rank, n in enumerate(found.neighbours[0], 1):
        table.add_row(str(rank), str(n.id), str(n.label), f"{n.score:.4f}")
    console.print(table)


def _json_option(text: str | None, name: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint=name) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return value


@main.group()
def gallery() -> None:
    """Apps' galleries: items (images or vectors, with ids and metadata) to search."""


@gallery.command("create")
@click.argument("name")
@click.option("--model", "model_id", type=int, required=True, help="A deployed model's id.")
@as_json
def gallery_create(name: str, model_id: int, as_json: bool) -> None:
    """A new gallery bound to the model's serving version."""
    made = _api(_client().galleries.create, name, model_id)
    if as_json:
        return _echo_json(made)
    console.print(f"gallery {made.name}: model {made.model_id} deployment {made.model_version}, "
                  f"{made.dim} dimensions")


@gallery.command("list")
@as_json
def gallery_list(as_json: bool) -> None:
    found = _api(_client().galleries.list)
    if as_json:
        return _echo_json([g.model_dump(mode="json") for g in found])
    table = Table("name", "model", "deployment", "dim", "items", "created")
    for g in found:
        table.add_row(g.name, str(g.model_id), str(g.model_version), str(g.dim), str(g.items),
                      f"{g.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@gallery.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete the gallery and all its items?")
def gallery_delete(name: str) -> None:
    """Delete a gallery and all its items (asks first; --yes does not)."""
    _api(_client().galleries.delete, name)
    console.print(f"gallery {name} deleted")


@gallery.command("add")
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metadata", help="A JSON object given to every item added.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="For a large add (an import job): wait until it has finished.")
@as_json
def gallery_add(name: str, images: tuple[str, ...], metadata: str | None, wait: bool,
                as_json: bool) -> None:
    """Add image files (or every file in a directory) to gallery NAME; each item's id is
    the file's path (a directory's files: relative to it, without the suffix). An id
    already there is replaced."""
    meta = _json_option(metadata, "--metadata")
    files = _image_files(images)
    items = [{"id": item_id, "image": path.read_bytes(), "metadata": meta}
             for item_id, path in files]
    galleries = _client().galleries
    try:
        done = _api(galleries.add, name, items)
    except click.ClickException as exc:  # the API names items by position: say which file
        exc.message = re.sub(r"items\[(\d+)\]", lambda m: str(files[int(m[1])][1])
                             if int(m[1]) < len(files) else m[0], exc.message)
        raise
    if isinstance(done, JobPublic) and wait:  # its id first: the job goes on if this stops
        click.echo(f"import job {done.id}: {done.status} (Ctrl-C stops waiting, "
                   f"not the import; `mec gallery cancel {name} {done.id}` stops it)",
                   err=True)
        done = _api(galleries.wait, name, done.id, timeout=24 * 3600)
    if as_json:
        return _echo_json(done)
    if isinstance(done, JobPublic):
        console.print(f"import job {done.id}: {_status(done.status)}"
                      + (f", {done.result}" if done.result else ""))
        if wait and done.status != JobStatus.SUCCEEDED:
            sys.exit(1)
    else:
        console.print(f"added {done.added} items to {name}")


@gallery.command("cancel")
@click.argument("name")
@click.argument("job_id", type=int)
@as_json
def gallery_cancel(name: str, job_id: int, as_json: bool) -> None:
    """Cancel import JOB_ID into gallery NAME (what `add` printed): the items written so
    far stay."""
    job = _api(_client().galleries.cancel, name, job_id)
    if as_json:
        return _echo_json(job)
    console.print(_cancel_line(job, "import job"))


def _image_files(paths: tuple[str, ...]) -> list[tuple[str, Path]]:
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            found += [(str(p.relative_to(given).with_suffix("")), p)
                      for p in sorted(given.rglob("*")) if p.is_file()]
        else:
            found.append((given.stem, given))
    return found


@gallery.command("search")
@click.argument("name")
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--like", "item_id", help="Search by this item of the gallery instead.")
@click.option("-k", "--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--filter", "filter_", help='Metadata filter, e.g. \'{"colour": "red"}\'.')
@as_json
def gallery_search(name: str, image: str | None, item_id: str | None, k: int,
                   filter_: str | None, as_json: bool) -> None:
    """The k items of gallery NAME nearest to IMAGE (or to an item, with --like)."""
    if (image is None) == (item_id is None):
        raise click.UsageError("give an IMAGE or --like ITEM_ID")
    found = _api(_client().galleries.search, name,
                 image=Path(image).read_bytes() if image else None, item_id=item_id, k=k,
                 filter=_json_option(filter_, "--filter"))
    if as_json:
        return _echo_json(found)
    table = Table("rank", "item", "score", "metadata",
                  title=f"{name} (model deployment {found.model_version})", title_justify="left")
    for rank, hit in enumerate(found.results, 1):
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", json.dumps(hit.metadata))
    console.print(table)


@gallery.command("rm")
@click.argument("name")
@click.argument("item_ids", nargs=-1)
@click.option("--filter", "filter_", help="Delete every item this metadata filter keeps.")
def gallery_rm(name: str, item_ids: tuple[str, ...], filter_: str | None) -> None:
    """Delete items of gallery NAME by id, or by --filter."""
    if bool(item_ids) == (filter_ is not None):
        raise click.UsageError("give ITEM_IDS or --filter")
    deleted = _api(_client().galleries.remove, name, ids=list(item_ids) or None,
                   filter=_json_option(filter_, "--filter"))
    console.print(f"deleted {deleted} items from {name}")


@main.group()
def datasets() -> None:
    """The project's datasets: image archives uploaded as versions, trained on with
    --dataset imagefolder --data-dir dataset://NAME."""


@datasets.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the images are.")
@as_json
def datasets_create(name: str, description: str, as_json: bool) -> None:
    """Create dataset NAME in the key's project (empty: upload a version next)."""
    made = _api(_client().datasets.create, name, description)
    if as_json:
        return _echo_json(made)
    console.print(f"dataset {made.name} created")


@datasets.command("upload")
@click.argument("name")
@click.argument("archive", type=click.Path(exists=True))
@click.option("--test-fraction", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Of each class, the part held out for evaluation (unless the archive has "
              "its own train/ and test/ folders).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@as_json
def datasets_upload(name: str, archive: str, test_fraction: float, seed: int,
                    as_json: bool) -> None:
    """Upload ARCHIVE (.tar, .tar.gz or .zip of class folders of images, or a folder, sent
    as a tar) as the dataset's next version."""
    client = _client()
    if Path(archive).is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            packed = Path(tmp) / "images.tar"
            with tarfile.open(packed, "w") as tar:
                for path in sorted(Path(archive).rglob("*")):
                    if path.is_file():
                        tar.add(path, arcname=str(path.relative_to(archive)))
            version = _api(client.datasets.upload, name, packed, test_fraction, seed)
    else:
        version = _api(client.datasets.upload, name, archive, test_fraction, seed)
    if as_json:
        return _echo_json(version)
    console.print(f"{version.uri}: {version.images} images in {len(version.classes)} "
                  f"classes (digest {version.digest[:12]})")


@datasets.command("list")
@as_json
def datasets_list(as_json: bool) -> None:
    """The project's datasets, with their latest version's images and classes."""
    found = _api(_client().datasets.list)
    if as_json:
        return _echo_json([d.model_dump(mode="json") for d in found])
    table = Table("name", "latest", "images", "classes", "description")
    for d in found:
        last = d.versions[-1] if d.versions else None
        table.add_row(d.name, str(d.latest or "-"), str(last.images) if last else "-",
                      str(len(last.classes)) if last else "-", d.description)
    console.print(table)


@datasets.command("show")
@click.argument("name")
@as_json
def datasets_show(name: str, as_json: bool) -> None:
    """Dataset NAME: each version (its URI, images, split, common sizes) and the latest
    version's images per class and split."""
    found = _api(_client().datasets.get, name)
    if as_json:
        return _echo_json(found)
    console.print(f"dataset {found.name}: {found.description or '(no description)'}")
    for v in found.versions:
        sizes = ", ".join(f"{size} ×{n}" for size, n in sorted(
            v.sizes.items(), key=lambda item: -item[1])[:3])
        console.print(f"  {v.uri}  {v.images} images, {_split(v.split)}, "
                      f"{v.created_at:%Y-%m-%d %H:%M}" + (f", sizes {sizes}" if sizes else ""))
    if found.versions:
        table = Table("class", "train", "test")
        for cls, counts in found.versions[-1].classes.items():
            table.add_row(cls, str(counts["train"]), str(counts["test"]))
        console.print(table)


def _split(split: dict) -> str:
    if split.get("given"):
        return "the archive's own train and test folders"
    return (f"{split['test_fraction']:.0%} of each class held out for testing "
            f"(seed {split['seed']})")


@datasets.command("rm")
@click.argument("name")
@click.confirmation_option(prompt="Delete the dataset and every version's files?")
def datasets_rm(name: str) -> None:
    """Delete dataset NAME with all its versions and their files (asks first; --yes does
    not). Jobs that trained on it keep their results."""
    _api(_client().datasets.delete, name)
    console.print(f"dataset {name} deleted")


if __name__ == "__main__":
    main()
