"""TorchServe's keys through the store (MEC_TORCHSERVE_KEYS=store), against a real
TorchServe and a real S3 server: its host publishes them (renewed when they expire soon,
without the API key), and a client on another host reads them, and waits for the next
publication when TorchServe refuses the key it holds."""

import json
import threading
import time

import pytest

from mec_platform import model_server, storage
from serving.client import KeyRing, Keys, TorchServe, Unavailable, renew
from serving.torchserve import LocalTorchServe, unused_ports


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    """Keys of one minute: always within the publisher's renewal margin."""
    ts = LocalTorchServe(tmp_path_factory.mktemp("ts"), tmp_path_factory.mktemp("models"),
                         *unused_ports(3), extra={"token_expiration_min": "1"}).start()
    yield ts
    ts.stop()


def _elsewhere(ts: LocalTorchServe, tmp_path) -> TorchServe:
    """A client whose own folder holds no key file, reading the published keys."""
    ring = KeyRing(tmp_path / "no-torchserve-here", ts.management_url,
                   lambda: storage.read_bytes(model_server.KEYS))
    return TorchServe(ts.inference_url, ts.management_url, ring)


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_published_keys__renewed_before_they_expire_and_without_the_api_key(
        torchserve, platform_store, tmp_path):
    before = Keys.read(torchserve.home)
    body = model_server.publish_once(torchserve.home, torchserve.management_url)
    after = Keys.read(torchserve.home)
    assert after.inference != before.inference and after.management != before.management
    published = json.loads(storage.read_bytes(model_server.KEYS))
    assert body == after.published() and set(published) == {"management", "inference"}
    assert after.api not in storage.read_bytes(model_server.KEYS).decode()
    assert Keys.parse(published).expires == after.expires
    assert _elsewhere(torchserve, tmp_path).ready()  # the management key is accepted
    # keys of one minute are always within the margin: the next round renews them again
    # and replaces the copy
    etag = platform_store.stat(model_server.KEYS).digest
    assert model_server.publish_once(torchserve.home, torchserve.management_url,
                                     last=body) != body
    assert platform_store.stat(model_server.KEYS).digest != etag


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_refused_key_waits_for_the_next_publication(torchserve, platform_store, tmp_path):
    """The key is renewed on TorchServe's host behind the client's back: TorchServe refuses
    the one it holds, and the client's request succeeds with the key published next."""
    last = model_server.publish_once(torchserve.home, torchserve.management_url)
    client = _elsewhere(torchserve, tmp_path)
    held = client.keys.get("management")
    renew(torchserve.management_url, "management", Keys.read(torchserve.home).api)
    assert Keys.read(torchserve.home).management != held
    later = threading.Timer(1.5, model_server.publish_once,
                            (torchserve.home, torchserve.management_url, last))
    started = time.monotonic()
    later.start()
    try:
        assert client.names() == set()  # refused once, then answered with the new key
    finally:
        later.join()
    assert time.monotonic() - started >= 1.5
    assert client.keys.get("management") == Keys.read(torchserve.home).management != held


@pytest.mark.parametrize("store", ["file"], indirect=True)
def test_no_published_keys__unavailable_naming_the_publisher(torchserve, platform_store,
                                                             tmp_path):
    client = _elsewhere(torchserve, tmp_path)
    with pytest.raises(Unavailable, match="mec torchserve publish-keys"):
        client.names()
    assert not client.ready()
