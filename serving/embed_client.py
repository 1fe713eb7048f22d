"""A synchronous client of a deployed model's embeddings for batch work (gallery adds, in
the API's thread pool and in workers), with the platform's TorchServe inference key,
renewed like the API's (serving.torchserve.fresh_keys). Images that TorchServe cannot
read are reported by position; the others are embedded."""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path

import httpx
import numpy as np

from serving.torchserve import Keys, fresh_keys

BATCH = 64  # images per request: serving.service.MAX_IMAGES (which imports torch)
_BAD = re.compile(r"^images\[(\d+)\]: (.*)$", re.S)


class Unavailable(RuntimeError):
    """TorchServe did not answer, or not with embeddings (the message says how)."""


class EmbedClient:
    def __init__(self, inference_url: str, management_url: str, home: Path) -> None:
        self.url, self.management_url, self.home = inference_url, management_url, home
        self.http = httpx.Client(timeout=120)
        self.keys: Keys | None = None
        self.lock = threading.Lock()

    def embed(self, endpoint: str, images: list[bytes]) -> tuple[np.ndarray, dict[int, str]]:
        """(vectors of the readable images in order, {position: why} of the others)."""
        vectors, bad = [], {}
        for start in range(0, len(images), BATCH):
            todo = list(range(start, min(start + BATCH, len(images))))
            while todo:
                answer = self._post(endpoint, [images[i] for i in todo])
                if not isinstance(answer, str):
                    vectors.append(answer)
                    break
                found = _BAD.match(answer)  # the handler names the image of a batch
                if found is None and len(todo) > 1:
                    raise Unavailable(f"the model server refused the batch: {answer}")
                position = todo[int(found[1])] if found else todo[0]
                bad[position] = found[2] if found else answer
                todo.remove(position)  # set it aside and send the rest again
        dim = vectors[0].shape[1] if vectors else 0
        return (np.concatenate(vectors) if vectors else np.empty((0, dim), np.float32)), bad

    def _post(self, endpoint: str, images: list[bytes]) -> np.ndarray | str:
        """The embeddings, or TorchServe's reason for a 400 (a bad image)."""
        body = {"images": [base64.b64encode(i).decode() for i in images]}
        for attempt in range(2):
            try:
                response = self.http.post(f"{self.url}/predictions/{endpoint}", json=body,
                                          headers={"Authorization": f"Bearer "
                                                   f"{self._key(renew=attempt > 0)}"})
            except httpx.HTTPError as exc:
                raise Unavailable(f"the model server is unreachable ({exc})") from None
            if b"InvalidKeyException" not in response.content:
                break
        if response.status_code == 200:
            return np.asarray(response.json()["embeddings"], np.float32).reshape(len(images), -1)
        reason = _reason(response)
        if response.status_code == 400:
            return reason
        raise Unavailable(f"the model server answered {response.status_code}: {reason}")

    def _key(self, renew: bool) -> str:
        with self.lock:
            if self.keys is None or renew or self.keys.expiring():
                self.keys = fresh_keys(self.home, self.management_url,
                                       ("inference",) if renew else ())
            return self.keys.inference


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error") or body.get("message") or body)
    except ValueError:
        return response.text[:500]
