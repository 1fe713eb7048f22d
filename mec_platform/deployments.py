"""Deployments: the service that submits deploy and undeploy jobs (a route's, or a sweep's
promotion of its best trial), and the state the platform restores: the database says
which models serve at which version (specs.Deployment); TorchServe starts empty (`--ncs`),
so whenever it (re)starts every model recorded as serving is registered again, at the
same version, from the archives its deploy left. Galleries, bound to a deployment number,
stay valid.

Where the archives are: on a file:// store, in the model store TorchServe shares with the
platform on its host (registered by file name, as always); on an S3 store, in the store
(`archives/`), registered by a presigned URL from which TorchServe downloads the archive
into its own model store: no disk shared between TorchServe's host and the workers'."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mec_platform import datasets, jobs, paths, storage
from mec_platform.errors import Conflict, Invalid
from mec_platform.jobs import JobKind, JobStatus
from mec_platform.queue import Queue
from mec_platform.settings import get_settings
from mec_platform.specs import LOST, Deployment, DeploySpec
from mec_platform.tables import Job, Model
from serving.client import TorchServe

log = logging.getLogger(__name__)


def submit(session: Session, model: Model, action: str, spec: DeploySpec | None = None) -> Job:
    """A deploy (or undeploy) job of the model, in the model's project; Invalid when the
    reference set's folder is outside the data roots, or a reference set other than the
    model's training set is not where a worker will look (jobs.check_dataset)."""
    spec = _pinned_reference(session, model, spec or DeploySpec())
    try:
        paths.check(spec.reference_data_dir, "reference_data_dir",
                    get_settings().allowed_data_roots)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if action == "deploy" and (spec.reference_data_dir is not None
                               or spec.reference_dataset not in (None, model.dataset)):
        jobs.check_dataset(spec.reference_dataset or model.dataset, spec.reference_data_dir,
                           (spec.reference_split,), ("reference_dataset", "reference_data_dir"))
    return jobs.submit(session, JobKind.DEPLOY, {
        "model_id": model.id, "action": action, **spec.model_dump(mode="json")}, Queue.CPU,
        f"{action} model {model.id}", priority=5, project=model.project)


def _pinned_reference(session: Session, model: Model, spec: DeploySpec) -> DeploySpec:
    """The spec with a dataset:// reference set pinned to an exact version of the model's
    project: the one it names, or, when it names no reference set, the version the model
    was trained on (the training host's unpacked copy, which the model's own config
    names, is no use to the host that deploys). NotFound or Invalid naming the field."""
    uri = spec.reference_data_dir
    if uri is None and spec.reference_dataset in (None, model.dataset) and model.job_id:
        trained = (session.get(Job, model.job_id).config or {}).get("data_dir")
        uri = trained if (trained or "").startswith(datasets.SCHEME) else None
    if not (uri or "").startswith(datasets.SCHEME):
        return spec
    if spec.reference_dataset not in (None, "imagefolder"):
        raise Invalid("reference_dataset: a dataset:// version is an image folder: set "
                      "reference_dataset to imagefolder")
    exact, _ = datasets.pin(session, model.project, uri, "reference_data_dir")
    return spec.model_copy(update={"reference_dataset": "imagefolder",
                                   "reference_data_dir": exact})


def promote(session: Session, sweep: Job) -> Job:
    """Deploy the model of a succeeded sweep's best trial (Conflict: there is none)."""
    best = (sweep.result or {}).get("best") if sweep.kind == JobKind.SWEEP else None
    if sweep.status != JobStatus.SUCCEEDED or not best:
        raise Conflict(f"job {sweep.id} is not a succeeded sweep with a best trial")
    model = session.scalar(select(Model).where(Model.job_id == best["job_id"]))
    if model is None:
        raise Conflict(f"the best trial, job {best['job_id']}, has no model")
    return submit(session, model, "deploy")


def archive(model_store: Path, endpoint: str, number: int) -> Path:
    """Where an endpoint's archive is on a file:// store (worker/deploy.py leaves it)."""
    return model_store / f"{endpoint}-v{number}.mar"


def keep_archive(mar: Path, model_store: Path, endpoint: str, number: int) -> None:
    """Leave a deploy's archive where `archive_source` finds it (moved from `mar`)."""
    store = storage.get_store()
    if store.folder("archives") is not None:
        mar.replace(archive(model_store, endpoint, number))
    else:
        store.put(f"archives/{endpoint}-v{number}.mar", mar)
        mar.unlink()


def remove_archive(model_store: Path, endpoint: str, number: int) -> None:
    """A retired version's archive, where keep_archive left it (nothing if it is gone)."""
    store = storage.get_store()
    if store.folder("archives") is not None:
        archive(model_store, endpoint, number).unlink(missing_ok=True)
    else:
        store.delete(f"archives/{endpoint}-v{number}.mar")


def archive_urls() -> str | None:
    """What TorchServe's `allowed_urls` must permit beside its model store: the presigned
    URLs of the archives in an S3 store (None on a file:// store)."""
    store = storage.get_store()
    return None if store.folder("archives") is not None else \
        store.presigned_pattern("archives")


def archive_source(model_store: Path, endpoint: str, number: int) -> str | None:
    """What TorchServe registers an endpoint's archive from: its file name in the model
    store, or a presigned URL of it in an S3 store (valid 15 minutes); None: it is gone."""
    store, name = storage.get_store(), archive(model_store, endpoint, number).name
    if store.folder("archives") is not None:
        return name if (model_store / name).exists() else None
    return store.presigned(f"archives/{name}") if store.stat(f"archives/{name}") else None


def recorded_serving(session: Session) -> list[tuple[int, Deployment]]:
    """(model id, deployment) of each deployment the database records as serving, but
    those a deploy or undeploy under way is changing (it changes TorchServe on its own)."""
    busy = {c["model_id"] for c in session.scalars(select(Job.config).where(
        Job.kind == JobKind.DEPLOY, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))))}
    return [(i, d) for i, d in session.execute(select(Model.id, Model.deployment))
            if d is not None and d.serving and i not in busy]


def unserved(session: Session, connect: Callable[[], TorchServe]) -> list[int]:
    """The models recorded as serving of which TorchServe lacks an endpoint (not yet
    registered again after its restart); `connect` is called only when one is recorded.
    Raises serving.client.Unavailable when TorchServe does not answer."""
    serving = recorded_serving(session)
    if not serving:
        return []
    served = connect().names()
    return [i for i, d in serving if any(e not in served for e in d.endpoints())]


def restore(open_session: Callable[[], AbstractContextManager[Session]],
            connect: Callable[[], TorchServe], model_store: Path) -> dict[int, str]:
    """Register again every endpoint of a serving deployment that TorchServe does not
    serve, from its archive; a deployment whose archive is gone is marked `lost` with the
    reason. `connect` gives the management API (called only when a deployment serves).
    Returns {model id: what was done} for the models it touched."""
    with open_session() as s:
        serving = recorded_serving(s)
    if not serving:
        return {}
    management = connect()
    served = management.names()
    done = {}
    for model_id, deployment in serving:
        missing = [e for e in deployment.endpoints() if e not in served]
        if not missing:
            continue
        number = deployment.number
        sources = {e: archive_source(model_store, e, number) for e in missing}
        gone = [archive(model_store, e, number).name for e, s in sources.items() if s is None]
        if gone:
            reason = (f"the archive {', '.join(gone)} of version {number} is gone from the "
                      "store, so TorchServe cannot serve it again; deploy the model again")
            _mark_lost(open_session, model_id, number, reason)
            done[model_id] = reason
            continue
        for endpoint in missing:
            register(management, endpoint, sources[endpoint], deployment.workers,
                     deployment.batch_size, deployment.max_batch_delay_ms)
        done[model_id] = f"registered {', '.join(missing)} again at version {number}"
        log.warning("model %s: %s", model_id, done[model_id])
    return done


def register(management: TorchServe, endpoint: str, source: str, workers: int,
             batch_size: int, max_batch_delay_ms: int) -> None:
    """Register one archive from its `archive_source`. Another process restoring the same
    endpoint at the same time is no error; nor is an archive TorchServe downloaded before
    it restarted (still in its model store: registered from there, by name)."""
    try:
        management.register(source, endpoint, workers, batch_size, max_batch_delay_ms)
    except RuntimeError as exc:
        if endpoint in management.names():
            return
        if not source.startswith("http") or "already exists" not in str(exc):
            raise
        management.register(source.partition("?")[0].rpartition("/")[2], endpoint,
                            workers, batch_size, max_batch_delay_ms)


def _mark_lost(open_session, model_id: int, number: int, reason: str) -> None:
    """Mark the deployment lost, unless a deploy replaced it meanwhile."""
    with open_session() as s:
        deployment = s.get(Model, model_id).deployment
        if deployment is not None and deployment.serving and deployment.number == number:
            s.execute(update(Model).where(Model.id == model_id).values(
                deployment=deployment.model_copy(update={"status": LOST, "reason": reason})))
            s.commit()
    log.error("model %s: %s", model_id, reason)
