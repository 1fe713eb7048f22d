"""The platform's clients of its TorchServe, made from the settings, and where they find
TorchServe's keys: in its home (MEC_TORCHSERVE_KEYS=home, the default: TorchServe on the
same host, as `mec up` runs it) or in the store (`store`: TorchServe's host publishes them
there with `mec torchserve publish-keys`, which also renews them before they expire), so
that the API, the workers and TorchServe share no folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mec_platform import storage
from mec_platform.settings import Settings, get_settings
from serving.client import AsyncTorchServe, KeyRing, Keys, TorchServe, renew

log = logging.getLogger(__name__)

KEYS = "torchserve/keys.json"  # the published keys' place in the store


def key_ring(settings: Settings) -> KeyRing:
    published = (lambda: storage.read_bytes(KEYS)) if settings.torchserve_keys == "store" \
        else None
    return KeyRing(settings.torchserve_home, settings.torchserve_management_url, published)


def client(settings: Settings | None = None) -> TorchServe:
    """A client of the platform's TorchServe (management, and embedding for galleries)."""
    s = settings or get_settings()
    return TorchServe(s.torchserve_inference_url, s.torchserve_management_url, key_ring(s))


def async_client(settings: Settings | None = None) -> AsyncTorchServe:
    """The API's client of TorchServe's inference endpoints."""
    s = settings or get_settings()
    return AsyncTorchServe(s.torchserve_inference_url, s.torchserve_management_url,
                           key_ring(s))


def publish_once(home: Path, management_url: str, last: bytes | None = None) -> bytes:
    """Renew the keys of the TorchServe whose home is `home` that expire soon, and put
    their serving copy (no API key) in the store when it differs from `last`; returns it."""
    keys = Keys.read(home)
    if expiring := keys.expiring():
        for kind in expiring:
            renew(management_url, kind, keys.api)
        keys = Keys.read(home)
    body = keys.published()
    if body != last:
        storage.put_bytes(KEYS, body)
        log.info("published TorchServe's keys in %s", storage.get_store().url(KEYS))
    return body


def publish_forever(home: Path, management_url: str, interval_s: float) -> None:
    """publish_once every `interval_s` seconds: a restarted TorchServe's new keys and every
    renewal reach the store within that time. Waits for TorchServe's first key file, and
    goes on through a TorchServe or a store that does not answer."""
    last = None
    while True:
        try:
            last = publish_once(home, management_url, last)
        except FileNotFoundError:
            log.info("waiting for TorchServe's key file in %s", home)
        except Exception as exc:  # TorchServe restarting, the store down: next round
            log.warning("TorchServe's keys not published: %s", exc)
        time.sleep(interval_s)
