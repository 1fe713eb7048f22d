"""Python client of the platform's REST API, for downstream code and the `mec` commands.

    from mec_client import Client
    client = Client()                      # MEC_API_URL / MEC_API_KEY, or `mec login`'s file
    job = client.submit({"kind": "pretrain", "config": {"dataset": "fashion-mnist"}})
    job = client.wait(job.id, on_progress=lambda j: print(j.progress.percent))
    frame = client.metrics(job.id, frame=True)  # a pandas DataFrame, when pandas is installed

Answers are the API's own pydantic models (mec_client.models); an error answer raises
APIError with the API's `detail`; no answer at all raises TransportError.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from mec_client.enums import FINISHED, SYNC_IMAGES
from mec_client.login import DEFAULT_URL, saved_login
from mec_client.transport import HTTPTransport, Response, TransportError


class _Bodies:
    """mec_client.models, imported when an answer is first parsed: its classes are pydantic
    models, and pydantic alone loads about 150 modules, which `import mec_client` should
    not cost. The import system's lock makes the first use from several threads safe."""

    def __getattr__(self, name: str) -> Any:
        from mec_client import models as bodies

        return getattr(bodies, name)


if TYPE_CHECKING:
    from mec_client import models
else:
    models = _Bodies()


class APIError(Exception):
    """An error answer from the API: its HTTP status and `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class Client:
    """The platform's REST API. url and key: arguments, else MEC_API_URL and MEC_API_KEY,
    else the file `mec login` wrote. `retries`: attempts after a 429 (waiting its
    Retry-After) and after a connection error on a call that is safe to repeat.
    `transport`: what sends the requests (tests pass a fake one)."""

    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 30,
                 retries: int = 3, backoff: float = 0.5, transport=None) -> None:
        saved = saved_login()
        url = url or os.environ.get("MEC_API_URL") or saved.get("url") or DEFAULT_URL
        key = key or os.environ.get("MEC_API_KEY") or saved.get("key")
        if not key:
            raise APIError(401, "no API key: pass key=, set MEC_API_KEY or run `mec login`")
        self.url, self.retries, self.backoff = url.rstrip("/"), retries, backoff
        self.transport = transport or HTTPTransport(
            self.url, timeout, headers={"Authorization": f"Bearer {key}",
                                        "User-Agent": "mec-client/0.1"})
        self.galleries = Galleries(self)
        self.datasets = Datasets(self)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- jobs --------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> models.JobPublic:
        """Submit a job spec (the body of POST /v1/jobs). Each call carries an
        Idempotency-Key, so a retry after a lost answer never submits twice."""
        key = idempotency_key or uuid.uuid4().hex
        return models.JobPublic.model_validate(self._call(
            "POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key}, repeatable=True))

    def job(self, job_id: int) -> models.JobPublic:
        return models.JobPublic.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, status: str | None = None, kind: str | None = None, tag: str | None = None,
             limit: int = 50, offset: int = 0, parent_id: int | None = None) -> models.JobsPublic:
        """Jobs, newest first; `parent_id`: a sweep's trials."""
        params = {"status": status, "kind": kind, "tag": tag, "limit": limit, "offset": offset,
                  "parent_id": parent_id}
        return models.JobsPublic.model_validate(self._call(
            "GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None}))

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 2.0,
             on_progress: Callable[[models.JobPublic], None] | None = None) -> models.JobPublic:
        """Poll until the job has finished (succeeded, failed or cancelled); `on_progress`
        sees every poll's view. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(poll)

    def metrics(self, job_id: int, names: list[str] | None = None, since_step: int = 0,
                max_points: int = 1000, frame: bool = False):
        """The job's metric series (downsampled to `max_points`); with frame=True a pandas
        DataFrame indexed by step, one column per metric."""
        params: dict[str, Any] = {"since_step": since_step, "max_points": max_points}
        if names:
            params["name"] = names
        found = models.MetricsPublic.model_validate(self._call(
            "GET", f"/v1/jobs/{job_id}/metrics", params=params))
        if not frame:
            return found
        import pandas as pd  # optional: only for frame=True

        columns = {name: pd.Series(s.values, index=s.steps) for name, s in found.series.items()}
        table = pd.DataFrame(columns)
        table.index.name = "step"
        return table

    def logs(self, job_id: int, attempt: int | None = None, since: int = 0,
             follow: bool = False) -> Iterator[models.LogLinePublic]:
        """The job's log lines after line id `since` (every attempt, or one), oldest first;
        with `follow`, also the lines still to come, until the job has finished."""
        params: dict[str, Any] = {"since": since} | ({"attempt": attempt} if attempt else {})
        if not follow:
            while lines := models.LogsPublic.model_validate(self._call(
                    "GET", f"/v1/jobs/{job_id}/logs", params=params)).lines:
                yield from lines
                params["since"] = lines[-1].id
            return
        failures = 0
        while True:  # a stream cut short is taken up again after the last line seen
            try:
                with self.transport.stream("GET", f"/v1/jobs/{job_id}/logs",
                                           params=params | {"follow": "true"}) as (response,
                                                                                   lines):
                    if response.status >= 400:
                        raise APIError(response.status, _detail(response))
                    for event, data in _events(lines):
                        if event == "end":
                            return
                        line = models.LogLinePublic.model_validate_json(data)
                        params["since"], failures = line.id, 0
                        yield line
            except TransportError:
                failures += 1
                if failures > self.retries:
                    raise
                time.sleep(self.backoff * 2 ** failures)

    def cancel(self, job_id: int) -> models.JobPublic:
        return models.JobPublic.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def promote(self, sweep_id: int) -> models.JobPublic:
        """Deploy the model of a finished sweep's best trial; returns the deploy job."""
        return models.JobPublic.model_validate(self._call("POST", f"/v1/jobs/{sweep_id}/promote"))

    def evaluate(self, job_id: int, protocol: str = "knn", **config: Any) -> models.JobPublic:
        """Submit an evaluation of a finished pretraining job (fields of EvaluateSpec)."""
        return self.submit({"kind": "evaluate",
                            "config": {"job_id": job_id, "protocol": protocol, **config}})

    # --- models ------------------------------------------------------------------------
    def models(self, limit: int = 50, offset: int = 0) -> models.ModelsPublic:
        return models.ModelsPublic.model_validate(self._call(
            "GET", "/v1/models", params={"limit": limit, "offset": offset}))

    def model(self, model_id: int) -> models.ModelPublic:
        return models.ModelPublic.model_validate(self._call("GET", f"/v1/models/{model_id}"))

    def deploy(self, model_id: int, **spec: Any) -> models.JobPublic:
        """Deploy a model to TorchServe (fields of DeploySpec); returns the deploy job."""
        return models.JobPublic.model_validate(self._call(
            "POST", f"/v1/models/{model_id}/deploy", json=spec or None))

    def undeploy(self, model_id: int) -> models.JobPublic:
        return models.JobPublic.model_validate(
            self._call("POST", f"/v1/models/{model_id}/undeploy"))

    def embed(self, model_id: int, images: list[bytes]) -> models.EmbeddingsPublic:
        """l2-normalised embeddings of image files (PNG, JPEG, ...) from the deployed model,
        in order (up to 64 per call)."""
        return models.EmbeddingsPublic.model_validate(self._call(
            "POST", f"/v1/models/{model_id}/embed", json=_images(images), repeatable=True))

    def search(self, model_id: int, images: list[bytes], k: int | None = None,
               vote: bool = False) -> models.SearchPublic:
        """The k nearest images of the deployed model's reference set for each image file."""
        params = {"vote": str(vote).lower()} | ({"k": k} if k is not None else {})
        return models.SearchPublic.model_validate(self._call(
            "POST", f"/v1/models/{model_id}/search", json=_images(images), params=params,
            repeatable=True))

    # --- transport ---------------------------------------------------------------------
    def _call(self, method: str, path: str, repeatable: bool | None = None,
              params: dict | None = None, json: Any = None,
              content: bytes | BinaryIO | None = None,
              headers: dict[str, str] | None = None) -> Any:
        """One API call with retries: after a 429 (any call: it was refused, not done) and
        after a connection error, when the call is safe to repeat (GETs, and calls marked
        `repeatable`) or when the connection never opened."""
        repeatable = method == "GET" if repeatable is None else repeatable
        if json is not None:
            content, headers = _json_bytes(json), {"Content-Type": "application/json",
                                                   **(headers or {})}
        params = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            if hasattr(content, "seek"):  # a file body is sent from its start each time
                content.seek(0)
            try:
                response = self.transport.request(method, path, params=params,
                                                  headers=headers, body=content)
            except TransportError as exc:
                if attempt >= self.retries or not (exc.unsent or repeatable):
                    raise
                time.sleep(self.backoff * 2 ** attempt)
            else:
                if response.status != 429 or attempt >= self.retries:
                    break
                time.sleep(float(response.headers.get("retry-after", 1)))
            attempt += 1
        if response.status >= 400:
            raise APIError(response.status, _detail(response))
        return response.json() if response.content else None


class Galleries:
    """An app's galleries: `client.galleries.add("shop", [{"id": "sku-1", "image": png,
    "metadata": {"colour": "red"}}])`, then `.search("shop", image=png, k=5,
    filter={"colour": {"in": ["red", "blue"]}})`. Items carry an image (bytes) or a
    vector (a list of floats)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, name: str, model_id: int) -> models.GalleryPublic:
        return models.GalleryPublic.model_validate(self.client._call(
            "POST", "/v1/galleries", json={"name": name, "model_id": model_id}))

    def list(self) -> list[models.GalleryPublic]:
        return models.GalleriesPublic.model_validate(self.client._call("GET", "/v1/galleries")).data

    def get(self, name: str) -> models.GalleryPublic:
        return models.GalleryPublic.model_validate(
            self.client._call("GET", f"/v1/galleries/{name}"))

    def delete(self, name: str) -> None:
        self.client._call("DELETE", f"/v1/galleries/{name}")

    def add(self, name: str, items: Iterable[dict], wait: float | None = None
            ) -> models.GalleryAdded | models.JobPublic:
        """Add or replace items. Up to 64 images (with any number of vectors) are written
        before the answer (models.GalleryAdded); more are streamed as NDJSON to an import job,
        returned (models.JobPublic) at once, or when it has finished if `wait` (seconds) is set."""
        items = list(items)
        path = f"/v1/galleries/{name}/items"
        if sum("image" in item for item in items) <= SYNC_IMAGES:
            return models.GalleryAdded.model_validate(self.client._call(
                "POST", path, json={"items": [_item(i) for i in items]}, repeatable=True))
        job = models.JobPublic.model_validate(self.client._call(
            "POST", path, content=b"".join(_lines(items)), repeatable=False,
            headers={"Content-Type": "application/x-ndjson"}))
        return job if wait is None else self.wait(name, job.id, timeout=wait)

    def wait(self, name: str, job_id: int, timeout: float | None = None,
             poll: float = 0.5) -> models.JobPublic:
        """Follow an import job (with the app's own key) until it has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = models.JobPublic.model_validate(self.client._call(
                "GET", f"/v1/galleries/{name}/imports/{job_id}"))
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"import {job_id} is still {job.status} after {timeout} s")
            time.sleep(poll)

    def cancel(self, name: str, job_id: int) -> models.JobPublic:
        """Cancel an import job (with the app's own key): a queued one at once, a running
        one after the chunk it is writing; the items written so far stay."""
        return models.JobPublic.model_validate(self.client._call(
            "POST", f"/v1/galleries/{name}/imports/{job_id}/cancel"))

    def item(self, name: str, item_id: str) -> models.GalleryItemPublic:
        return models.GalleryItemPublic.model_validate(self.client._call(
            "GET", f"/v1/galleries/{name}/items/{item_id}"))

    def remove(self, name: str, ids: list[str] | None = None,
               filter: dict | None = None) -> int:
        """Delete items by id or by metadata filter; returns how many were deleted."""
        body = {"ids": ids} if filter is None else {"filter": filter}
        return self.client._call("POST", f"/v1/galleries/{name}/delete", json=body,
                                 repeatable=True)["deleted"]

    def search(self, name: str, image: bytes | None = None, vector: list[float] | None = None,
               item_id: str | None = None, k: int = 10,
               filter: dict | None = None) -> models.GallerySearchPublic:
        """The k nearest items to an image file, a vector or an item of the gallery."""
        body = {"k": k, "filter": filter, "vector": vector, "item_id": item_id,
                "image": base64.b64encode(image).decode() if image is not None else None}
        return models.GallerySearchPublic.model_validate(self.client._call(
            "POST", f"/v1/galleries/{name}/search", repeatable=True,
            json={k: v for k, v in body.items() if v is not None}))


class Datasets:
    """The project's datasets: `client.datasets.create("shoes")`, then
    `.upload("shoes", "shoes.tar.gz")` (class folders of images; a new version each time its
    content changes), and jobs train on `{"dataset": "imagefolder", "data_dir":
    "dataset://shoes"}`."""

    KINDS = {".zip": "application/zip", ".gz": "application/gzip", ".tgz": "application/gzip",
             ".tar": "application/x-tar"}

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, name: str, description: str = "") -> models.DatasetPublic:
        return models.DatasetPublic.model_validate(self.client._call(
            "POST", "/v1/datasets", json={"name": name, "description": description}))

    def list(self) -> list[models.DatasetPublic]:
        return models.DatasetsPublic.model_validate(self.client._call("GET", "/v1/datasets")).data

    def get(self, name: str) -> models.DatasetPublic:
        return models.DatasetPublic.model_validate(self.client._call("GET", f"/v1/datasets/{name}"))

    def delete(self, name: str) -> None:
        self.client._call("DELETE", f"/v1/datasets/{name}")

    def upload(self, name: str, archive: str | Path, test_fraction: float = 0.1,
               seed: int = 0) -> models.DatasetVersionPublic:
        """A new version from a .tar, .tar.gz or .zip file, streamed from disk. Sending the
        latest version's archive again with the same split (after a broken upload, say)
        answers that version; an older one's becomes a new latest version."""
        path = Path(archive)
        kind = self.KINDS.get(path.suffix.lower(), "application/octet-stream")
        with path.open("rb") as body:
            return models.DatasetVersionPublic.model_validate(self.client._call(
                "POST", f"/v1/datasets/{name}/versions", content=body, repeatable=True,
                params={"test_fraction": test_fraction, "seed": seed},
                headers={"Content-Type": kind,
                         "Content-Length": str(path.stat().st_size)}))


def _item(item: dict) -> dict:
    """An item for the API: image bytes as base64, vectors as plain floats."""
    out = {"id": item["id"], "metadata": item.get("metadata")}
    if "image" in item:
        out["image"] = base64.b64encode(item["image"]).decode()
    else:
        out["vector"] = [float(v) for v in item["vector"]]
    return out


def _lines(items: list[dict]) -> Iterator[bytes]:
    for item in items:
        yield (json.dumps(_item(item)) + "\n").encode()


def _events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of a Server-Sent Events stream; comment lines are skipped."""
    event, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield event, data
            event, data = "message", ""
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]


def _images(images: list[bytes]) -> dict:
    """The JSON body of /embed and /search: image files as base64."""
    return {"images": [base64.b64encode(image).decode() for image in images]}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _detail(response: Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text or response.reason
