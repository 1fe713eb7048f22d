"""Request handling for the embedding and kNN endpoints, independent of any server.

A request is what TorchServe hands a handler for one HTTP call: a dict whose "body" (or
"data") is raw image bytes or parsed JSON, or multipart fields by name. Each request gets
its own answer; a bad one gets an error without failing its batch-mates.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import torch

from serving.client import FLOAT32
from serving.embedder import Embedder
from serving.images import MAX_BYTES, BadRequest, decode
from serving.reference_set import ReferenceSet, vote

MAX_IMAGES = 64  # per request


@dataclass
class Parsed:
    """One request: its decoded images and options, or the reason it was refused."""

    images: list[torch.Tensor] = field(default_factory=list)
    k: int = 10
    vote: bool = False
    error: str | None = None


class Service:
    """The model behind both endpoints. task: 'embed' or 'knn' (needs a reference set)."""

    def __init__(self, export_dir: str | Path, task: str = "embed", device: str = "cpu",
                 reference_dir: str | Path | None = None, default_k: int = 10,
                 max_k: int = 100, max_bytes: int = MAX_BYTES, projector: bool = False,
                 deployment: int | None = None) -> None:
        if task not in ("embed", "knn"):
            raise ValueError(f"task must be 'embed' or 'knn', got {task!r}")
        self.task, self.default_k, self.max_k, self.max_bytes = task, default_k, max_k, max_bytes
        self.deployment = deployment  # the platform's number of this deployment (1, 2, ...)
        self.embedder = Embedder(export_dir, device, projector)
        gpu = int(device.split(":")[1]) if device.startswith("cuda:") else None
        self.references = ReferenceSet.load(Path(reference_dir), gpu) if task == "knn" else None

    # --- parsing -----------------------------------------------------------------------
    def parse(self, request: dict) -> Parsed:
        try:
            raw, options = self._payload(request)
            if not raw:
                raise BadRequest("no image in the request")
            if len(raw) > MAX_IMAGES:
                raise BadRequest(f"{len(raw)} images in one request, over the limit of "
                               f"{MAX_IMAGES}")
            k = self._int(options.get("k", self.default_k), "k")
            if not 1 <= k <= self.max_k:
                raise BadRequest(f"k must be between 1 and {self.max_k}, got {k}")
            images = [self._decode(b, i if len(raw) > 1 else None) for i, b in enumerate(raw)]
            return Parsed(images, k, self._bool(options.get("vote", False)))
        except BadRequest as exc:
            return Parsed(error=str(exc))

    def _decode(self, data: bytes, position: int | None) -> torch.Tensor:
        """One image; in a batch, an error names its position ('images[3]: ...')."""
        norm = self.embedder.norm
        try:
            return decode(data, norm.channels, norm.image_size, self.max_bytes)
        except BadRequest as exc:
            if position is None:
                raise
            raise BadRequest(f"images[{position}]: {exc}") from None

    def _payload(self, request: dict) -> tuple[list[bytes], dict]:
        body = request.get("body", request.get("data"))
        if isinstance(body, (bytes, bytearray)):
            return [bytes(body)], {}
        if isinstance(body, dict):  # JSON: {"images": [base64, ...], "k": 5, "vote": true}
            items = body.get("images", [body["image"]] if "image" in body else [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise BadRequest("'images' must be a list of base64 strings")
            try:
                raw = [base64.b64decode(i, validate=True) for i in items]
            except (binascii.Error, ValueError):
                raise BadRequest("'images' holds a string that is not base64") from None
            return raw, body
        if body is None and request:  # multipart form: image=@file, k=5, vote=true
            files = [bytes(v) for key, v in request.items() if key in ("image", "file")
                     and isinstance(v, (bytes, bytearray))]
            options = {k: bytes(v).decode(errors="replace") if isinstance(v, (bytes, bytearray))
                       else v for k, v in request.items() if k in ("k", "vote")}
            return files, options
        raise BadRequest("send an image (raw bytes with its Content-Type, e.g. image/png, not "
                       "a form encoding; or multipart field 'image') or JSON "
                       "{\"images\": [base64, ...]}")

    @staticmethod
    def _int(value, name: str) -> int:
        """An integer option: 5, 5.0 or "5"; not true, 5.5, 1e309 or Infinity (which JSON
        parsing turns into floats that int() refuses with OverflowError)."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BadRequest(f"{name} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise BadRequest(f"{name} must be an integer, got {value!r}") from None

    @staticmethod
    def _bool(value) -> bool:
        return value is True or str(value).lower() in ("1", "true", "yes")

    # --- inference ---------------------------------------------------------------------
    def run(self, parsed: list[Parsed]) -> list[dict]:
        """Answers, one per request, from one forward pass over all their images."""
        images = [img for p in parsed if p.error is None for img in p.images]
        vectors = self.embedder.embed(torch.stack(images)) if images else None
        answers, start = [], 0
        for p in parsed:
            if p.error is not None:
                answers.append({"error": p.error})
                continue
            mine = vectors[start:start + len(p.images)].numpy()
            start += len(p.images)
            answers.append(self._answer(p, mine, batch=len(parsed)))
        return answers

    @staticmethod
    def encode(answer: dict, accept: str | None = None) -> tuple[bytes, str, dict[str, str]]:
        """(body, content type, headers) of an answer: an embedding answer in FLOAT32 when
        the first type `accept` names is FLOAT32, else compact JSON. orjson writes float32
        arrays in 0.01 ms per 512-d vector where json.dumps(indent=2), what TorchServe does
        with a dict, takes 0.39 ms (docs/performance.md, "Where the time goes")."""
        first = (accept or "").split(",")[0].split(";")[0].strip().lower()
        if first == FLOAT32 and "embeddings" in answer:
            vectors = answer["embeddings"]
            return (vectors.astype("<f4", copy=False).tobytes(), FLOAT32,
                    {"X-Mec-Dim": str(vectors.shape[1]),
                     "X-Mec-Batch-Size": str(answer["batch_size"]),
                     "X-Mec-Model-Version": str(answer["model_version"] or "")})
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), "application/json", {}

    def _answer(self, p: Parsed, vectors, batch: int) -> dict:
        """The answer to one request; embeddings stay a float32 array (the handler encodes
        them)."""
        head = {"model_version": self.deployment, "batch_size": batch}
        if self.task == "embed":
            return head | {"dim": int(vectors.shape[1]), "embeddings": vectors}
        found = self.references.search(vectors, p.k)
        answer = head | {"k": p.k, "neighbours": found}
        if p.vote:
            answer["vote"] = [vote(n) for n in found]
        return answer
