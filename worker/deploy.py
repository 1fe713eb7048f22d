"""Deploy a model to TorchServe as a new version, replacing the old one only once ready."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mec_platform import deployments, model_server, storage
from mec_platform.db import session_scope
from mec_platform.settings import Settings, get_settings
from mec_platform.specs import SERVING, UNDEPLOYED, Deployment, DeploySpec
from serving.embedder import Embedder
from serving.package import package
from serving.torchserve import worker_plan
from worker import kept


def deploy(settings: Settings, model_id: int, artifacts: dict, previous: Deployment | None,
           spec: DeploySpec, on_progress: Callable[[int, int], None] | None = None
           ) -> Deployment:
    """Build archives for the next version, register them, make them the default, then
    retire the previous version (unregistered, its archives and pixels removed). Returns
    the new deployment record (with the embeddings' width, `dim`, which galleries check
    vectors against). `on_progress`: (reference images embedded, of all); what it raises
    (a cancel) ends the deploy with nothing served and no files left."""
    name = f"mec-{model_id}"
    record = Deployment(status=SERVING, name=name,
                        number=(previous.number if previous else 0) + 1)
    number, version = record.number, record.torchserve_version
    staging = settings.model_store / f".staging-{name}-v{number}"
    plan = worker_plan(spec.workers, spec.torch_threads, spec.batch_size,
                       gpu=torch.cuda.is_available())
    # the folder's old name: pixels of deployments made before the rename are there too
    images_key = f"galleries/{name}-v{number}.npy"
    images = storage.work_folder(images_key)
    _clear_staging(settings, name)
    try:
        packaged = package(storage.local_file(artifacts["checkpoint"]), staging, name,
                           version, spec.reference_dataset, spec.reference_data_dir,
                           spec.reference_split, spec.reference_limit,
                           torch_threads=plan.threads, reference_images=images,
                           on_progress=on_progress, deployment=number,
                           kept=kept.finder(model_id))
    except BaseException:  # failed or cancelled (worker.tasks.JobCancelled): nothing served
        shutil.rmtree(staging, ignore_errors=True)
        images.unlink(missing_ok=True)
        raise
    management = model_server.client(settings)
    urls = {}
    for task, mar in packaged.archives.items():
        endpoint = name if task == "embed" else f"{name}-knn"
        deployments.keep_archive(Path(mar), settings.model_store, endpoint, number)
        deployments.register(management, endpoint, deployments.archive_source(
            settings.model_store, endpoint, number), plan.workers, plan.batch_size,
            spec.max_batch_delay_ms)
        management.set_default(endpoint, version)  # the new version takes new requests now
        time.sleep(spec.drain_seconds)  # requests already queued on the old one finish
        for old in management.describe(endpoint) or []:
            if old["modelVersion"] != version:
                management.unregister(endpoint, old["modelVersion"])
        urls[task] = f"{settings.torchserve_inference_url}/predictions/{endpoint}"
    staging.rmdir()
    _retire(settings, name, previous)
    return record.model_copy(update=dict(
        urls=urls, workers=plan.workers, torch_threads=plan.threads,
        batch_size=plan.batch_size, max_batch_delay_ms=spec.max_batch_delay_ms,
        reference_images=storage.keep(images, images_key, move=True), dim=_dim(artifacts),
        reference_reused_from=packaged.reused_from))


def _dim(artifacts: dict) -> int:
    """The width of the model's embeddings (its export's two files side by side)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, file in (("encoder", "encoder.pt"), ("meta", "model.json")):
            (Path(tmp) / file).symlink_to(storage.local_file(artifacts[name]))
        return Embedder(tmp).dim


def undeploy(settings: Settings, model_id: int, previous: Deployment | None) -> Deployment:
    """Unregister every version of both endpoints; the serving one's files removed."""
    management = model_server.client(settings)
    for endpoint in (f"mec-{model_id}", f"mec-{model_id}-knn"):
        for old in management.describe(endpoint) or []:
            management.unregister(endpoint, old["modelVersion"])
    _retire(settings, f"mec-{model_id}", previous)
    _clear_staging(settings, f"mec-{model_id}")
    return Deployment(status=UNDEPLOYED, number=previous.number if previous else 0)


def _clear_staging(settings: Settings, name: str) -> None:
    """What a deploy of the model killed mid-way (kill -9) left in the model store: its
    staging folder. Deploys of one model run one at a time (worker.tasks), so no other
    deploy of it is using one."""
    for stale in settings.model_store.glob(f".staging-{name}-v*"):
        shutil.rmtree(stale, ignore_errors=True)


def _retire(settings: Settings, name: str, record: Deployment | None) -> None:
    """Remove what a version no longer served kept: its two archives, and the pixels for
    its search results."""
    if record is None:
        return
    for endpoint in (name, f"{name}-knn"):
        deployments.remove_archive(settings.model_store, endpoint, record.number)
    if record.reference_images:
        storage.remove(record.reference_images)


def restore() -> dict[int, str]:
    """Serve again what the database says is serving, after TorchServe (re)started empty
    (mec_platform.deployments.restore)."""
    settings = get_settings()
    return deployments.restore(session_scope, lambda: model_server.client(settings),
                               settings.model_store)
