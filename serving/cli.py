"""`mec package` and `mec embed`: the serving commands of `mec` (declared as "mec.commands"
entry points in pyproject.toml)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import numpy as np

from mec_core.config import DATASETS


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Training checkpoint to package.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Model store directory for the .mar files.")
@click.option("--name", required=True, help="Model name: NAME.mar (embedding) and "
              "NAME-knn.mar (retrieval).")
@click.option("--version", default="1.0", show_default=True, help="Model version.")
# --gallery-*: the options' old names, still taken
@click.option("--reference-dataset", "--gallery-dataset", type=click.Choice(list(DATASETS)),
              default=None, help="The reference set the kNN endpoint searches [default: the "
              "training set].")
@click.option("--reference-data-dir", "--gallery-data-dir", default=None,
              help="Directory of the reference dataset.")
@click.option("--reference-split", "--gallery-split", type=click.Choice(["train", "test"]),
              default="train", show_default=True, help="Split used as the reference set.")
@click.option("--reference-limit", "--gallery-limit", type=int, default=None,
              help="First N reference images only.")
@click.option("--projector", is_flag=True, help="Serve projector outputs instead of the "
              "backbone's features.")
def package(checkpoint, out_dir, name, version, reference_dataset, reference_data_dir,
            reference_split, reference_limit, projector) -> None:
    """Build TorchServe archives: the encoder, its preprocessing and a reference set."""
    from mec_core.data import DatasetError
    from serving.package import package as run

    try:
        archives = run(checkpoint, out_dir, name, version, reference_dataset,
                       reference_data_dir, reference_split, reference_limit,
                       projector=projector)
    except (DatasetError, ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({k: str(v) for k, v in archives.items()}))


def _image_files(paths: tuple[str, ...]) -> list[Path]:
    from mec_core.data import IMAGE_SUFFIXES

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise click.BadParameter(f"{p} does not exist", param_hint="IMAGE_OR_DIR")
    if not files:
        raise click.BadParameter("no image files found", param_hint="IMAGE_OR_DIR")
    return files


@click.command()
@click.argument("images", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Training checkpoint whose encoder embeds.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Output .npy (N x D, l2-normalized); OUT.json lists the files in order "
                   "and the checkpoint.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of stopping.")
def embed(images, checkpoint, out_file, batch_size, device, skip_bad) -> None:
    """Embed images offline, with exactly the preprocessing of the served model."""
    import torch
    from rich.progress import track

    from mec_core.export import export
    from serving.embedder import Embedder
    from serving.images import BadRequest, decode

    files = _image_files(images)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            export(checkpoint, tmp)
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        embedder = Embedder(tmp, device)
    norm = embedder.norm
    kept, vectors, batch = [], [], []
    for i, f in enumerate(track(files, description="embedding", transient=True)):
        try:
            batch.append(decode(f.read_bytes(), norm.channels, norm.image_size))
            kept.append(str(f))
        except BadRequest as exc:
            if not skip_bad:
                raise click.ClickException(f"{f}: {exc} (use --skip-bad to skip it)") from None
            click.echo(f"skipped {f}: {exc}", err=True)
        if len(batch) == batch_size or (i == len(files) - 1 and batch):
            vectors.append(embedder.embed(torch.stack(batch)))
            batch = []
    if not kept:
        raise click.ClickException("no image could be read")
    matrix = torch.cat(vectors).numpy()
    np.save(out_file, matrix)
    Path(f"{out_file}.json").write_text(json.dumps({"files": kept,
                                                    "checkpoint": checkpoint}))
    click.echo(json.dumps({"out": out_file, "count": len(kept), "dim": int(matrix.shape[1])}))
