"""The API's client of TorchServe's inference endpoints: one pooled async connection set,
and TorchServe's inference key, which the platform holds and renews (serving.torchserve.
fresh_keys) so that apps only ever see their own API key."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import lru_cache

import aiohttp

from mec_platform.settings import get_settings
from serving.torchserve import Keys, fresh_keys

TIMEOUT_S = 60


class TorchServe:
    def __init__(self) -> None:
        settings = get_settings()
        self.home = settings.torchserve_home
        self.management_url = settings.torchserve_management_url
        self.url = settings.torchserve_inference_url
        self.http: aiohttp.ClientSession | None = None  # made in the server's event loop
        self.keys: Keys | None = None
        self.lock = asyncio.Lock()

    async def _keys(self, refused: str | None = None) -> Keys:
        """The held keys; read (and renewed when they expire soon, or when TorchServe
        `refused` the one held) off the event loop."""
        async with self.lock:
            if refused is not None and self.keys is not None and self.keys.inference != refused:
                return self.keys  # another request renewed it meanwhile
            if self.keys is None or refused is not None or self.keys.expiring():
                force = ("inference",) if refused is not None else ()
                self.keys = await asyncio.to_thread(fresh_keys, self.home, self.management_url,
                                                    force)
            return self.keys

    async def predict(self, endpoint: str, body: bytes, content_type: str) -> Answer:
        """POST the body to /predictions/{endpoint} as it came; once more with a renewed
        key if TorchServe refused the held one."""
        keys = await self._keys()
        response = await self._post(endpoint, body, content_type, keys)
        if _refused(response):
            keys = await self._keys(refused=keys.inference)
            response = await self._post(endpoint, body, content_type, keys)
        return response

    async def _post(self, endpoint: str, body: bytes, content_type: str,
                    keys: Keys) -> Answer:
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=256))
        async with self.http.post(f"{self.url}/predictions/{endpoint}", data=body,
                                  headers={"Authorization": f"Bearer {keys.inference}",
                                           "Content-Type": content_type}) as response:
            return Answer(response.status, await response.read())


@dataclass
class Answer:
    status_code: int
    content: bytes

    def json(self):
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


def _refused(response: Answer) -> bool:
    """TorchServe refused the key: it answers 400 with an InvalidKeyException."""
    return response.status_code in (400, 401) and b"InvalidKeyException" in response.content


@lru_cache(maxsize=1)
def torchserve() -> TorchServe:
    """The process's TorchServe client (made on first use, for the settings of then)."""
    return TorchServe()
