"""TorchServe's client: its keys, its management API and its inference API, with a
synchronous face (`TorchServe`: management, and batches of images embedded for gallery
adds) and an asynchronous one (`AsyncTorchServe`: the API's forwarding of /embed and
/search). Both hold TorchServe's keys in a `KeyRing`, send a request once more with a
renewed key when TorchServe refuses the held one, read TorchServe's errors as `Answer`
does and raise `Unavailable` when it does not answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from serving.plugin import ENDPOINT as ADAPTIVE_BATCHING

MAX_REQUEST_BYTES = 10 * 2**20  # TorchServe's max_request_size and max_response_size
TIMEOUT_S = 120  # TorchServe's own default_response_timeout: it has answered by then
REGISTER_TIMEOUT_S = 300  # a synchronous registration waits until the workers loaded
RENEW_BEFORE_S = 300  # renew a key this long before it expires
PUBLISHED_BEFORE_S = 60  # read a published key again this long before it expires
PUBLISH_WAIT_S = 15  # how long a refused published key waits for a newer one
# embed() sends its images as parallel requests of PER_REQUEST: a TorchServe worker takes up
# to its batch size of requests at once, so one big request (or a few) would keep the other
# workers idle (bench_galleries.py, 2 workers: 53 img/s as 4 x 16, 80 as 8 x 8)
PER_REQUEST, PARALLEL = 8, 8
# TorchServe's wait for a batch to fill: it takes what is queued at once and, while another
# worker of the model computes, waits this long for more (our plugin, serving.plugin: a lone
# request leaves at once; without it every batch waits); 2 ms keeps the throughput of 8 and
# 32 clients of 20 ms (docs/performance.md, "Serving")
MAX_BATCH_DELAY_MS = 2
# an embedding answer as raw little-endian float32, n × dim, rows in the images' order, for
# a client whose Accept names it first; its other fields travel as X-Mec-* headers
FLOAT32 = "application/octet-stream"
# TorchServe's answer to a registration with no worker (ApiUtils.registerModel)
_REGISTERED = re.compile(r'^Model "(.+)" Version: (\S+) registered with 0 initial workers')
_BAD = re.compile(r"^images\[(\d+)\]: (.*)$", re.S)  # the handler names the image of a batch


log = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """TorchServe did not answer, or not as asked (the message says how)."""


def _expiry(entry: dict) -> datetime:
    """'2026-12-01T05:26:19.595757103Z' (nanoseconds, which datetime does not read)."""
    return datetime.fromisoformat(entry["expiration time"][:19]).replace(tzinfo=timezone.utc)


@dataclass
class Keys:
    """TorchServe's token-authorization keys, as the key_file.json it writes in its home
    holds them: the management and inference keys (which expire) and the API key that
    renews them (absent from the published copy: serving keys only)."""

    management: str
    inference: str
    api: str = ""
    expires: dict[str, datetime] = field(default_factory=dict)

    @staticmethod
    def read(home: Path) -> Keys:
        return Keys.parse(json.loads((home / "key_file.json").read_text()))

    @staticmethod
    def parse(data: dict) -> Keys:
        return Keys(data["management"]["key"], data["inference"]["key"],
                    data.get("API", {}).get("key", ""),
                    {kind: _expiry(data[kind]) for kind in ("management", "inference")
                     if "expiration time" in data[kind]})

    def published(self) -> bytes:
        """The copy a host that does not share TorchServe's disk reads: without the API
        key, so that it can use the keys but not renew them."""
        return json.dumps({kind: {"key": getattr(self, kind)} | (
            {"expiration time": self.expires[kind].isoformat().replace("+00:00", "Z")}
            if kind in self.expires else {}) for kind in ("management", "inference")},
            sort_keys=True).encode()

    def expiring(self, within_s: float = RENEW_BEFORE_S) -> list[str]:
        """The kinds of key that expire within `within_s` seconds."""
        soon = datetime.now(timezone.utc) + timedelta(seconds=within_s)
        return [kind for kind, at in self.expires.items() if at <= soon]


class KeyRing:
    """The keys of one TorchServe, held for a client's requests (thread-safe).

    Read from the key_file.json in TorchServe's `home` and renewed through its management
    API (TorchServe rewrites the file) when one expires within RENEW_BEFORE_S or when
    TorchServe refused it. Or, on a host that does not share TorchServe's disk, read with
    `published()` from where TorchServe's host publishes them (mec_platform.model_server):
    that host renews them, and a refused key is read again until a newer one is there."""

    def __init__(self, home: Path, management_url: str,
                 published: Callable[[], bytes] | None = None) -> None:
        self.home, self.management_url, self.published = home, management_url, published
        # a published key is read again shortly before it expires: by then its host renewed it
        self.before_s = RENEW_BEFORE_S if published is None else PUBLISHED_BEFORE_S
        self.keys: Keys | None = None
        self.lock = threading.Lock()

    def held(self, kind: str) -> str | None:
        """The key of `kind` held, unless none is or one expires soon: no I/O, so an event
        loop asks here first and calls get() in a thread only when this is None."""
        keys = self.keys
        return None if keys is None or keys.expiring(self.before_s) else getattr(keys, kind)

    def get(self, kind: str, refused: str | None = None) -> str:
        """The key of `kind` ("inference" or "management"), read and renewed as needed.
        `refused`: the key TorchServe just refused; it is renewed unless another request
        or process renewed it meanwhile (then the newer key is the answer)."""
        with self.lock:
            if (self.keys is None or self.keys.expiring(self.before_s)
                    or getattr(self.keys, kind) == refused):
                self.keys = (self._from_home(kind, refused) if self.published is None
                             else self._from_publisher(kind, refused))
            return getattr(self.keys, kind)

    def _from_home(self, kind: str, refused: str | None) -> Keys:
        try:
            keys = Keys.read(self.home)
        except (OSError, ValueError, KeyError) as exc:
            raise Unavailable(f"TorchServe's keys cannot be read from {self.home} "
                              f"({exc!r}); is TorchServe running?") from None
        stale = set(keys.expiring()) | ({kind} if getattr(keys, kind) == refused else set())
        for stale_kind in sorted(stale):
            renew(self.management_url, stale_kind, keys.api)
        return Keys.read(self.home) if stale else keys

    def _from_publisher(self, kind: str, refused: str | None) -> Keys:
        deadline = time.monotonic() + PUBLISH_WAIT_S
        while True:
            try:
                keys = Keys.parse(json.loads(self.published()))
            except Exception as exc:  # the store's errors, or no copy published yet
                raise Unavailable(f"TorchServe's published keys cannot be read ({exc}); is "
                                  "`mec torchserve publish-keys` running beside it?") from None
            if getattr(keys, kind) != refused:
                return keys
            if time.monotonic() > deadline:
                raise Unavailable(f"TorchServe refused its {kind} key and no newer one was "
                                  f"published within {PUBLISH_WAIT_S} s; is `mec torchserve "
                                  "publish-keys` running beside it?")
            time.sleep(0.5)


def renew(management_url: str, kind: str, api_key: str) -> None:
    """Have TorchServe make a new key of `kind` (it rewrites its key file)."""
    try:
        response = httpx.post(f"{management_url}/token", params={"type": kind}, timeout=30,
                              headers=_bearer(api_key))
    except httpx.HTTPError as exc:
        raise Unavailable(f"the model server is unreachable ({exc})") from None
    Answer(response.status_code, response.content).expect(f"renew its {kind} key")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Answer:
    """TorchServe's answer to one request, as it came."""

    status_code: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def json(self):
        return json.loads(self.content)

    @property
    def key_refused(self) -> bool:
        """TorchServe refused the key (400 or 401 with an InvalidKeyException)."""
        return self.status_code in (400, 401) and b"InvalidKeyException" in self.content

    @property
    def reason(self) -> str:
        """TorchServe's message: {"error": ...} from our handler, or its own {"message": ...}."""
        try:
            body = json.loads(self.content)
            return str(body.get("error") or body.get("message") or body)
        except (ValueError, AttributeError):
            return self.content.decode(errors="replace")[:500]

    def expect(self, doing: str, *also: int) -> Answer:
        """This answer if it is a success (or its status one of `also`); else Unavailable,
        saying what TorchServe refused to do."""
        if not (200 <= self.status_code < 300 or self.status_code in also):
            raise Unavailable(f"TorchServe refused to {doing}: {self.status_code} {self.reason}")
        return self


class TorchServe:
    """The synchronous client of one TorchServe (its inference and management URLs, and its
    keys: the home where it writes them, or a KeyRing): the management calls of the
    platform, and batches of images embedded by a deployed model."""

    def __init__(self, inference_url: str, management_url: str, keys: Path | KeyRing) -> None:
        self.inference_url, self.management_url = inference_url, management_url
        self.keys = keys if isinstance(keys, KeyRing) else KeyRing(keys, management_url)
        self.http = httpx.Client(timeout=TIMEOUT_S,
                                 limits=httpx.Limits(max_connections=PARALLEL))
        self.pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="embed")

    def _call(self, kind: str, method: str, path: str, **kwargs) -> Answer:
        """One request to the `kind` API ("inference" or "management") with its key."""
        url = (self.inference_url if kind == "inference" else self.management_url) + path
        key = self.keys.get(kind)
        answer = self._send(method, url, key, **kwargs)
        if answer.key_refused:
            answer = self._send(method, url, self.keys.get(kind, refused=key), **kwargs)
        return answer

    def _send(self, method: str, url: str, key: str, headers: dict | None = None,
              **kwargs) -> Answer:
        try:
            response = self.http.request(method, url, headers=_bearer(key) | (headers or {}),
                                         **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the model server is unreachable ({exc})") from None
        return Answer(response.status_code, response.content,
                      {k.lower(): v for k, v in response.headers.items()})

    # --- inference ---------------------------------------------------------------------
    def predict(self, endpoint: str, body: bytes, content_type: str,
                accept: str = "application/json") -> Answer:
        """POST the body to /predictions/{endpoint}."""
        return self._call("inference", "POST", f"/predictions/{endpoint}", content=body,
                          headers={"Content-Type": content_type, "Accept": accept})

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
            body = {"images": [base64.b64encode(images[i]).decode() for i in todo]}
            answer = self.predict(endpoint, json.dumps(body).encode(), "application/json",
                                  FLOAT32)
            if answer.status_code == 200:
                return np.frombuffer(answer.content, "<f4").reshape(len(todo), -1), bad
            if answer.status_code != 400:
                raise Unavailable(f"the model server answered {answer.status_code}: "
                                  f"{answer.reason}")
            found = _BAD.match(answer.reason)
            if found is None and len(todo) > 1:
                raise Unavailable(f"the model server refused the batch: {answer.reason}")
            position = todo[int(found[1])] if found else todo[0]
            bad[position] = found[2] if found else answer.reason
            todo = [p for p in todo if p != position]  # set it aside, send the rest again
        return np.empty((0, 0), np.float32), bad

    # --- management --------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether TorchServe has written its keys and its management API answers."""
        try:
            return self._call("management", "GET", "/models").status_code == 200
        except Unavailable:
            return False

    def register(self, mar: str, model_name: str | None = None, workers: int = 1,
                 batch_size: int = 8, max_batch_delay_ms: int = MAX_BATCH_DELAY_MS,
                 adaptive: bool = True) -> dict:
        """Register an archive and start its workers. `adaptive` (where TorchServe runs our
        plugin, serving.plugin): its batches wait the delay for more requests only while
        another of its workers computes, so a lone request leaves at once; that is set
        between the registration, with no worker, and the workers' start. Returns
        TorchServe's answer to the step that started the workers."""
        params = {"url": mar, "initial_workers": 0 if adaptive else workers,
                  "synchronous": "true", "batch_size": batch_size,
                  "max_batch_delay": max_batch_delay_ms}
        if model_name:
            params["model_name"] = model_name
        answer = self._call("management", "POST", "/models", params=params,
                            timeout=REGISTER_TIMEOUT_S).expect(
                                f"register {mar.partition('?')[0]}").json()  # no signature
        if not adaptive:
            return answer
        registered = _REGISTERED.match(answer.get("status", ""))
        if registered is None:  # an archive whose own config starts workers
            raise Unavailable(f"TorchServe started workers at registering {mar}: {answer}")
        name, version = registered.groups()
        try:
            self._make_adaptive(name, version)
            return self._call("management", "PUT", f"/models/{name}/{version}", params={
                "min_worker": workers, "max_worker": workers, "synchronous": "true"},
                timeout=REGISTER_TIMEOUT_S).expect(
                    f"start the workers of {name} {version}").json()
        except BaseException:  # as a registration whose workers fail: nothing left
            with contextlib.suppress(Unavailable):
                self.unregister(name, version)
            raise

    def _make_adaptive(self, name: str, version: str) -> None:
        made = self._call("management", "PUT", f"/{ADAPTIVE_BATCHING}/{name}/{version}")
        if made.status_code == 404 and b"ModelNotFoundException" not in made.content:
            log.warning("TorchServe runs without our plugin (serving.plugin): a lone request "
                        "to %s waits the whole batch delay", name)
        else:
            made.expect(f"make the batches of {name} {version} adaptive")

    def adaptive(self, name: str, version: str) -> bool:
        """Whether a registered version's batches wait only while another worker computes."""
        return self._call("management", "GET", f"/{ADAPTIVE_BATCHING}/{name}/{version}").expect(
            f"read how {name} {version} batches").json()["adaptive"]

    def names(self) -> set[str]:
        """The names of the registered models (every page of the list)."""
        names, token = set(), None
        while True:
            page = self._call("management", "GET", "/models", params={"limit": 1000} | (
                {"next_page_token": token} if token else {})).expect("list its models").json()
            names |= {m["modelName"] for m in page.get("models", [])}
            token = page.get("nextPageToken")
            if not token:
                return names

    def describe(self, name: str) -> list[dict] | None:
        answer = self._call("management", "GET", f"/models/{name}/all")
        return answer.json() if answer.status_code == 200 else None

    def set_default(self, name: str, version: str) -> None:
        self._call("management", "PUT", f"/models/{name}/{version}/set-default").expect(
            f"make {version} the default of {name}")

    def unregister(self, name: str, version: str | None = None) -> None:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        self._call("management", "DELETE", path).expect(f"unregister {path}", 404)


class AsyncTorchServe:
    """The asynchronous client of one TorchServe's inference API: one pooled aiohttp
    session, made in the event loop of its first request."""

    def __init__(self, inference_url: str, management_url: str, keys: Path | KeyRing) -> None:
        self.url = inference_url
        self.keys = keys if isinstance(keys, KeyRing) else KeyRing(keys, management_url)
        self.http: aiohttp.ClientSession | None = None

    async def predict(self, endpoint: str, body: bytes, content_type: str,
                      accept: str = "application/json") -> Answer:
        """POST the body to /predictions/{endpoint} (the key read or renewed off the
        event loop)."""
        key = self.keys.held("inference") or await asyncio.to_thread(self.keys.get,
                                                                      "inference")
        headers = {"Content-Type": content_type, "Accept": accept}
        answer = await self._post(endpoint, body, headers, key)
        if answer.key_refused:
            key = await asyncio.to_thread(self.keys.get, "inference", key)
            answer = await self._post(endpoint, body, headers, key)
        return answer

    async def _post(self, endpoint: str, body: bytes, headers: dict[str, str], key: str
                    ) -> Answer:
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=256))
        try:
            async with self.http.post(f"{self.url}/predictions/{endpoint}", data=body,
                                      headers=_bearer(key) | headers) as response:
                return Answer(response.status, await response.read(),
                              {k.lower(): v for k, v in response.headers.items()})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"the model server is unreachable ({exc})") from None
