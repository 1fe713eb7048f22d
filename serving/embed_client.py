"""A synchronous client of a deployed model's embeddings for batch work (gallery adds, in
the API's thread pool and in workers), with the platform's TorchServe inference key,
renewed like the API's (serving.torchserve.fresh_keys). Images that TorchServe cannot
read are reported by position; the others are embedded."""

from __future__ import annotations

import base64
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from serving.torchserve import Keys, fresh_keys

# embed() sends its images as parallel requests of PER_REQUEST: a TorchServe worker takes up
# to its batch size of requests at once, so one big request (or a few) would keep the other
# workers idle (bench_galleries.py, 2 workers: 53 img/s as 4 x 16, 80 as 8 x 8)
PER_REQUEST, PARALLEL = 8, 8
_BAD = re.compile(r"^images\[(\d+)\]: (.*)$", re.S)


class Unavailable(RuntimeError):
    """TorchServe did not answer, or not with embeddings (the message says how)."""


class EmbedClient:
    def __init__(self, inference_url: str, management_url: str, home: Path) -> None:
        self.url, self.management_url, self.home = inference_url, management_url, home
        self.http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=PARALLEL))
        self.pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="embed")
        self.keys: Keys | None = None
        self.lock = threading.Lock()

    def embed(self, endpoint: str, images: list[bytes]) -> tuple[np.ndarray, dict[int, str]]:
        """(vectors of the readable images in order, {position: why} of the others). The
        images go as PARALLEL requests of up to PER_REQUEST at a time, so that every
        TorchServe worker has some."""
        chunks = [list(range(s, min(s + PER_REQUEST, len(images))))
                  for s in range(0, len(images), PER_REQUEST)]
        done = list(self.pool.map(lambda chunk: self._chunk(endpoint, images, chunk), chunks))
        vectors = [v for v, _ in done if len(v)]
        bad = {p: why for _, b in done for p, why in b.items()}
        dim = vectors[0].shape[1] if vectors else 0
        return (np.concatenate(vectors) if vectors else np.empty((0, dim), np.float32)), bad

    def _chunk(self, endpoint: str, images: list[bytes], todo: list[int]):
        bad = {}
        while todo:
            answer = self._post(endpoint, [images[i] for i in todo])
            if not isinstance(answer, str):
                return answer, bad
            found = _BAD.match(answer)  # the handler names the image of a batch
            if found is None and len(todo) > 1:
                raise Unavailable(f"the model server refused the batch: {answer}")
            position = todo[int(found[1])] if found else todo[0]
            bad[position] = found[2] if found else answer
            todo = [p for p in todo if p != position]  # set it aside, send the rest again
        return np.empty((0, 0), np.float32), bad

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
