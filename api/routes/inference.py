"""/v1/models/{id}/embed and /search: a deployed model's embeddings and its reference set
(labelled images embedded at deploy time) for apps, with their API key; the platform
forwards to TorchServe with its own."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from PIL import Image

from api.deps import EmbedKey, ServedModelDep
from api.inference import torchserve
from api.schemas import errors
from mec_client.models import EmbeddingsPublic, SearchPublic
from mec_platform import storage
from mec_platform.storage import StorageError
from mec_platform.tables import Model
from serving.client import FLOAT32, Unavailable
from serving.client import MAX_REQUEST_BYTES as MAX_BYTES

router = APIRouter(prefix="/v1/models", tags=["inference"], responses=errors(
    {400: "An image could not be read, or the body is not JSON.",
     404: "No such model in the key's projects.",
     409: "The model is not served (not deployed, undeployed or lost).",
     502: "The model server failed or is unreachable."}, 401, 403, 413, 415, 422))
TYPES = ("image/", "application/octet-stream", "multipart/form-data", "application/json")


@router.post("/{model_id}/embed", responses={
    200: {"model": EmbeddingsPublic, "description": "One l2-normalised vector per image; "
          f"with `Accept: {FLOAT32}`, the vectors as raw little-endian float32 (images × "
          "dim, dim in `X-Mec-Dim`; `X-Mec-Model-Version`, `X-Mec-Batch-Size`).",
          "content": {FLOAT32: {}}}})
async def embed(_: EmbedKey, model: ServedModelDep, request: Request):
    """Embeddings of images from the deployed model: a raw image body, a multipart field
    `image`, or JSON `{"images": [base64, ...]}` (up to 64 images). JSON answers, or raw
    float32 vectors when `Accept` names application/octet-stream first."""
    body, content_type, _ = await _body(model, request)
    return await _forward(_endpoint(model), body, content_type,
                          request.headers.get("accept", "application/json"))


@router.post("/{model_id}/search", responses={
    200: {"model": SearchPublic, "description": "The k nearest reference images per image."}})
async def search(_: EmbedKey, model: ServedModelDep, request: Request,
                 k: int | None = Query(None, ge=1, le=100, description="Neighbours per image "
                                       "[default: the deployment's, 10]."),
                 vote: bool = Query(False, description="Also the majority label.")):
    """Nearest neighbours of images in the model's reference set (the one packaged at
    deployment, from its training set unless the deploy said otherwise); the same bodies
    as /embed (multipart may carry `k` and `vote` fields instead)."""
    body, content_type, payload = await _body(model, request)
    if not content_type.startswith("multipart/"):  # options travel inside the body
        if payload is None:  # a raw image
            payload = {"images": [base64.b64encode(body).decode()]}
        if not isinstance(payload, dict):
            raise HTTPException(422, "body: JSON must be an object {\"images\": [...]}")
        payload |= {"vote": vote} | ({"k": k} if k is not None else {})
        body, content_type = json.dumps(payload).encode(), "application/json"
    return await _forward(f"{_endpoint(model)}-knn", body, content_type)


IMAGE = {200: {"content": {"image/png": {}}, "description": "The reference image (PNG)."}}


@router.get("/{model_id}/references/{item_id:path}/image", response_class=Response,
            responses=IMAGE)
@router.get("/{model_id}/gallery/{item_id:path}/image", response_class=Response,
            responses=IMAGE, deprecated=True, description="The old path of "
            "/v1/models/{model_id}/references/{item_id}/image.")
def reference_image(_: EmbedKey, model: ServedModelDep, item_id: str):
    """A reference image, e.g. to show search results ('train/1929')."""
    deployment = model.deployment
    if deployment is None or not deployment.serving or not deployment.reference_images:
        raise HTTPException(409, f"model {model.id} is not deployed with its reference "
                                 "images")
    path = deployment.reference_images
    split, _, index = item_id.rpartition("/")
    try:  # from an S3 store: through this process's cache, once per deployment
        pixels = np.load(storage.local_file(path), mmap_mode="r")
    except (FileNotFoundError, StorageError):  # retired by a redeploy since the model was read
        raise HTTPException(409, f"model {model.id} was redeployed; search again") from None
    if not split or not index.isdigit() or int(index) >= len(pixels):
        raise HTTPException(404, f"item_id: no reference image {item_id!r}")
    image = np.asarray(pixels[int(index)])
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


def _endpoint(model: Model) -> str:
    return model.deployment.name


async def _body(model: Model, request: Request) -> tuple[bytes, str, object]:
    """The request's body, its type and, for JSON, its parsed value (else None), once the
    model is known to be served."""
    if model.deployment is None or not model.deployment.serving:
        reason = (model.deployment and model.deployment.reason) or "it is not deployed"
        raise HTTPException(409, f"model {model.id} is not served: {reason} "
                                 f"(deploy it: POST /v1/models/{model.id}/deploy, or "
                                 f"`mec models deploy {model.id}`)")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(TYPES):
        raise HTTPException(415, f"body: send an image (image/*), multipart/form-data with an "
                                 f"'image' field or JSON {{\"images\": [base64]}}, not "
                                 f"{content_type or 'no Content-Type'}")
    body = await request.body()
    if len(body) > MAX_BYTES:
        raise HTTPException(413, f"body: {len(body)} bytes, over the limit of {MAX_BYTES}")
    if not content_type.startswith("application/json"):
        return body, content_type, None
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise HTTPException(400, f"body: not JSON ({exc})") from None
    _check_options(payload)
    return body, content_type, payload


def _check_options(payload) -> None:
    """What the API can see wrong in a JSON body is refused here, before it joins a
    TorchServe batch (whose handler checks each request again)."""
    if not isinstance(payload, dict):
        return
    k = payload.get("k")
    whole = (isinstance(k, int) and not isinstance(k, bool)) or \
        (isinstance(k, float) and k.is_integer())  # not 1e309 nor Infinity: floats in JSON
    if k is not None and not (whole and 1 <= k <= 100):
        raise HTTPException(422, f"k: must be an integer from 1 to 100, got {k!r}")
    images = payload.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise HTTPException(422, "images: must be a list of base64 strings")


async def _forward(endpoint: str, body: bytes, content_type: str,
                   accept: str = "application/json") -> Response:
    """TorchServe's answer as it came (its type and X-Mec-* headers), or its refusal as our
    error format."""
    try:
        answer = await torchserve().predict(endpoint, body, content_type, accept)
    except Unavailable as exc:
        raise HTTPException(502, str(exc)) from None
    if answer.status_code == 200:
        return Response(answer.content, media_type=answer.headers.get(
            "content-type", "application/json"), headers={
                k: v for k, v in answer.headers.items() if k.startswith("x-mec-")})
    if answer.status_code in (400, 413):
        raise HTTPException(answer.status_code, f"image: {answer.reason}")
    raise HTTPException(502, f"the model server answered {answer.status_code}: "
                             f"{answer.reason}")

