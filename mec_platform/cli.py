"""The platform's own commands of `mec`: db, keys, torchserve, up, down and demo (declared
with mec_core's and serving's as "mec.commands" entry points in pyproject.toml)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from mec_platform.keys import DEFAULT_PROJECT, Scope
from mec_platform.stack import Ports


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@click.option("--url", default=None, help="Database URL [default: MEC_DATABASE_URL, or the "
              "embedded SQLite file].")
def upgrade(url: str | None) -> None:
    """Apply all migrations, and create the store's bucket (an s3:// MEC_STORAGE_URL) if it
    is missing; safe to run again."""
    from mec_platform.migrate import upgrade as run
    from mec_platform.settings import get_settings
    from mec_platform.storage import get_store

    run(url or get_settings().database_url)
    get_store().prepare()
    click.echo("database schema is up to date")


@contextmanager
def _database() -> Iterator:
    """A session on the platform's database, or a CLI error that says which database it
    looked for and how to point at the stack's (run elsewhere, `mec keys` would otherwise
    create an empty SQLite file and fail on a missing table)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from mec_platform.db import session_scope
    from mec_platform.settings import get_settings

    url = get_settings().database_url
    hint = ("run `mec up` (or `mec db upgrade`) first, or point MEC_DATA_DIR or "
            "MEC_DATABASE_URL at the stack's")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise click.ClickException(f"no platform database at {parsed.database}: {hint}")
    try:
        with session_scope() as s:
            yield s
    except DBAPIError as exc:
        cause = str(exc.orig).strip().splitlines()[0]
        raise click.ClickException(f"the platform database {parsed.render_as_string()} "
                                   f"could not be used ({cause}): {hint}") from None


@click.group()
def keys() -> None:
    """API keys of the control plane (every route but the health checks needs one)."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what uses the key.")
@click.option("--scope", "scopes", multiple=True,
              type=click.Choice([str(s) for s in Scope]),
              help="What the key may do (repeat for several); default: every scope but "
              "admin.")
@click.option("--project", default=DEFAULT_PROJECT, show_default=True,
              help="The project whose jobs and models the key sees and creates.")
def keys_create(name: str, scopes: tuple[str, ...], project: str) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from mec_platform import keys as api_keys

    try:
        api_keys.check_project(project)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--project") from None
    with _database() as s:
        row, plain = api_keys.create(s, name, scopes, project)
        click.echo(f"{plain}")
        click.echo(f"key {row.id} ({row.prefix}...) for {name!r} in project {row.project!r} "
                   f"with {', '.join(row.scopes)}; it is not shown again", err=True)


@keys.command("revoke")
@click.argument("ident")
def keys_revoke(ident: str) -> None:
    """Revoke a key by id or by its first 12 characters."""
    from mec_platform import keys as api_keys

    with _database() as s:
        if not api_keys.revoke(s, ident):
            raise click.ClickException(f"no active key {ident!r}")
    click.echo(f"revoked {ident}")


@keys.command("list")
def keys_list() -> None:
    """Keys with their id, prefix, state, project, scopes and name."""
    from sqlalchemy import select

    from mec_platform.tables import ApiKey

    with _database() as s:
        for i, k in enumerate(s.scalars(select(ApiKey).order_by(ApiKey.id))):
            if i == 0:
                click.echo(f"{'id':>4}  {'prefix':<15}  {'state':<24} {'project':<16} "
                           f"{'scopes':<48} name")
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            click.echo(f"{k.id:>4}  {k.prefix}...  {state:<24} {k.project:<16} "
                       f"{','.join(k.scopes):<48} {k.name}")


@click.group()
def torchserve() -> None:
    """TorchServe's side of a platform whose hosts share no folder."""


@torchserve.command("publish-keys")
@click.option("--home", default=None, type=click.Path(file_okay=False),
              help="TorchServe's working directory, where it writes key_file.json "
              "[default: MEC_TORCHSERVE_HOME].")
@click.option("--management-url", default=None, help="TorchServe's management API on this "
              "host [default: MEC_TORCHSERVE_MANAGEMENT_URL].")
@click.option("--interval", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Seconds between two looks at the key file.")
def torchserve_publish_keys(home: str | None, management_url: str | None,
                            interval: float) -> None:
    """Run beside TorchServe: keep its keys in the store (MEC_STORAGE_URL), renewed before
    they expire, for the API and the workers on other hosts (MEC_TORCHSERVE_KEYS=store).
    The copy holds the management and inference keys, never the API key that renews them."""
    import logging

    from mec_platform import model_server
    from mec_platform.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    model_server.publish_forever(Path(home) if home else settings.torchserve_home,
                                 management_url or settings.torchserve_management_url,
                                 interval)


def _port_options(func):
    default = Ports()
    for option in reversed([
        click.option("--api-port", type=int, default=default.api, show_default=True),
        click.option("--inference-port", type=int, default=default.inference,
                     show_default=True, help="TorchServe inference API."),
        click.option("--management-port", type=int, default=default.management,
                     show_default=True, help="TorchServe management API (loopback only)."),
        click.option("--metrics-port", type=int, default=default.metrics, show_default=True,
                     help="TorchServe metrics API (Prometheus)."),
        click.option("--worker-metrics-port", type=int, default=default.worker_metrics,
                     show_default=True, help="The worker's Prometheus endpoint."),
    ]):
        func = option(func)
    return func


def _data_dir(value: str | None) -> Path:
    from mec_platform.settings import get_settings

    return Path(value) if value else get_settings().data_dir


@click.command()
@click.option("--data-dir", default=None, help="Data directory [default: MEC_DATA_DIR or "
              "./mec-data].")
@click.option("--storage-url", default=None, help="The store of datasets: s3://bucket/prefix "
              "(with MEC_S3_ENDPOINT_URL and the AWS_* credentials; the bucket is created "
              "if missing) [default: MEC_STORAGE_URL, else a folder in the data directory].")
@click.option("--ray-nodes", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Also start a local Ray cluster of this many nodes (the machine's CPUs "
              "and GPUs divided among them) and run jobs of several nodes on it "
              "(MEC_RAY_ADDRESS); needs the ray extra: pip install '.[ray]'.")
@click.option("--ray-port", type=int, default=Ports().ray, show_default=True,
              help="The Ray head's GCS port (with --ray-nodes).")
@_port_options
def up(data_dir, storage_url, ray_nodes, ray_port, api_port, inference_port, management_port,
       metrics_port, worker_metrics_port) -> None:
    """Start the API, a worker and TorchServe as local processes, and leave them running."""
    import importlib.util

    from mec_platform.stack import Stack
    from mec_platform.storage import open_store

    if ray_nodes and importlib.util.find_spec("ray") is None:
        raise click.BadParameter("Ray is not installed here: pip install '.[ray]'",
                                 param_hint="--ray-nodes")
    if storage_url:
        try:
            open_store(storage_url, os.environ.get("MEC_S3_ENDPOINT_URL")).prepare()
        except Exception as exc:  # a bad URL, an unreachable server, refused credentials
            raise click.BadParameter(str(exc), param_hint="--storage-url") from None
        os.environ["MEC_STORAGE_URL"] = storage_url  # the stack's processes inherit it
    stack = Stack(_data_dir(data_dir), Ports(api_port, inference_port, management_port,
                                             metrics_port, worker_metrics_port, ray_port),
                  ray_nodes)
    try:
        urls = stack.up()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    for name, url in urls.items():
        click.echo(f"{name:<22} {url}")
    if data_dir:  # mec keys, mec datasets, ... find the stack by MEC_DATA_DIR
        click.echo(f"for the other mec commands: export MEC_DATA_DIR={Path(data_dir).resolve()}")
    click.echo("stop with: mec down" + (f" --data-dir {data_dir}" if data_dir else ""))


@click.command()
@click.option("--data-dir", default=None, help="Data directory of the stack to stop.")
def down(data_dir) -> None:
    """Stop what `mec up` started."""
    from mec_platform.stack import Stack

    where = _data_dir(data_dir)
    stopped = Stack(where, Ports()).down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else
               f"nothing was running from {where.resolve()} (another stack: --data-dir)")


@click.command()
@click.option("--dataset", type=click.Choice(["auto", "fashion-mnist", "digits", "synthetic"]),
              default="auto", show_default=True,
              help="auto: fashion-mnist when installed, else digits.")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: by dataset].")
@click.option("--train-limit", type=int, default=None, help="First N training images.")
@click.option("--max-steps", type=int, default=None, help="Stop training after N steps.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Working directory [default: a new temporary one].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON at the end.")
def demo(dataset, epochs, train_limit, max_steps, data_dir, as_json) -> None:
    """The whole loop: start, pretrain, evaluate, deploy, embed and retrieve, stop."""
    import json

    from rich.console import Console

    from mec_platform.demo import DemoFailed, config_of, run

    dataset, config = config_of(dataset, epochs=epochs, train_limit=train_limit,
                                max_steps=max_steps)
    console = Console(stderr=as_json)
    try:
        summary = run(dataset, config, Path(data_dir) if data_dir else None, None, console)
    except (DemoFailed, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; every process was stopped") from None
    top = summary["knn_top1"]
    console.print(f"\nsummary: {dataset}, {summary['pretrain']['steps']} steps at "
                  f"{summary['pretrain']['images_per_sec']:.0f} images/s; kNN top-1 "
                  f"{top['mec']:.2f}% (random init {top['random_init']:.2f}%, raw pixels "
                  f"{top['raw_pixels']:.2f}%); stopped {', '.join(summary['stopped'])}")
    if as_json:
        click.echo(json.dumps(summary))

