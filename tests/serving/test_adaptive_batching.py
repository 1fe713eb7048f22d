"""Our TorchServe plugin (serving.plugin), in a real TorchServe: a registered model's
batches wait the batch delay for more requests only while another of its workers computes.
The delay is long here (DELAY_MS), so that waiting or not shows in the latency."""

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from serving.client import Unavailable
from serving.torchserve import LocalTorchServe, unused_ports

DELAY_MS = 400


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """TorchServe with tiny.mar twice, two workers and batches of 4 each: as `tiny` with
    adaptive batches, as `fixed` as TorchServe batches by itself."""
    _, _, store = trained
    ts = LocalTorchServe(tmp_path_factory.mktemp("ts"), store, *unused_ports(3)).start()
    try:
        management = ts.client()
        for name, adaptive in (("tiny", True), ("fixed", False)):
            management.register("tiny.mar", name, workers=2, batch_size=4,
                                max_batch_delay_ms=DELAY_MS, adaptive=adaptive)
        client = httpx.Client(base_url=ts.inference_url, timeout=60,
                              headers={"Authorization": f"Bearer {ts.keys().inference}"})
        yield ts, client
        client.close()
    finally:
        ts.stop()


def png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 140, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image():
    return png(32)


def timed(client: httpx.Client, endpoint: str, body: bytes) -> tuple[float, dict]:
    start = time.perf_counter()
    answer = client.post(f"/predictions/{endpoint}", content=body)
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - start, answer.json()


def test_the_plugin_says_which_models_batch_adaptively(served):
    ts, _ = served
    management = ts.client()
    assert management.adaptive("tiny", "1.0") is True
    assert management.adaptive("fixed", "1.0") is False
    assert [len(v["workers"]) for v in management.describe("tiny")] == [2]
    # a model whose workers run keeps its queue: one of them waits on it, holding its lock
    refused = management._call("management", "PUT", "/adaptive-batching/fixed/1.0")
    assert refused.status_code == 409 and "0 workers" in refused.reason
    assert management.adaptive("fixed", "1.0") is False
    for path in ("/adaptive-batching/nope/1.0", "/adaptive-batching/tiny/9.9",
                 "/adaptive-batching/tiny"):
        assert management._call("management", "PUT", path).status_code == 404, path
    for method in ("POST", "DELETE"):
        answer = management._call("management", method, "/adaptive-batching/tiny/1.0")
        assert answer.status_code == 405 and answer.headers["allow"] == "GET, PUT", method
    # the plugin answers on the management API only, with its key
    assert httpx.put(f"{ts.management_url}/adaptive-batching/tiny/1.0").status_code in (
        400, 401)


def test_a_lone_request_leaves_at_once(served, image):
    _, client = served
    for _ in range(5):
        seconds, answer = timed(client, "tiny", image)
        assert answer["batch_size"] == 1
        assert seconds < DELAY_MS / 2 / 1000, seconds
    # TorchServe's own batches wait the whole delay for a lone request
    seconds, answer = timed(client, "fixed", image)
    assert answer["batch_size"] == 1 and seconds >= DELAY_MS / 1000, seconds


def test_a_batch_waits_while_another_worker_computes(served, image):
    """One worker decodes a big image; a request that comes meanwhile waits for the next
    one, which joins its batch (without waiting it would have left alone)."""
    _, client = served
    big = png(6000)
    alone, _ = timed(client, "tiny", big)  # how long a worker computes it
    answers = {}

    def send(key: str, body: bytes) -> None:
        answers[key] = timed(client, "tiny", body)

    threads = [threading.Thread(target=send, args=("big", big))]
    threads[0].start()
    time.sleep(min(0.03, alone / 4))
    for key in ("first", "second"):
        threads.append(threading.Thread(target=send, args=(key, image)))
        threads[-1].start()
        time.sleep(min(0.03, alone / 4))
    for t in threads:
        t.join()
    assert answers["big"][1]["batch_size"] == 1  # both workers were idle: it left at once
    assert answers["first"][1]["batch_size"] == answers["second"][1]["batch_size"] == 2, (
        alone, answers)


def test_without_the_plugin_a_registration_still_serves(trained, tmp_path, image, caplog):
    """A TorchServe started without our plugin (no JDK where `mec up` ran): the model is
    registered and served, its batches TorchServe's own, and the log says so."""
    _, _, store = trained
    ts = LocalTorchServe(tmp_path, store, *unused_ports(3))
    ts.config.write_text("".join(line for line in ts.config.read_text().splitlines(True)
                                 if not line.startswith("plugins_path=")))
    ts.start()
    try:
        ts.client().register("tiny.mar", workers=2, batch_size=4, max_batch_delay_ms=DELAY_MS)
        assert "runs without our plugin" in caplog.text
        assert [len(v["workers"]) for v in ts.client().describe("tiny")] == [2]
        with httpx.Client(base_url=ts.inference_url, timeout=60, headers={
                "Authorization": f"Bearer {ts.keys().inference}"}) as client:
            seconds, answer = timed(client, "tiny", image)
        assert seconds >= DELAY_MS / 1000
    finally:
        ts.stop()


def test_a_model_whose_workers_fail_is_not_left_registered(served, tmp_path):
    """Registered with no worker, then its workers fail to load: the registration is
    undone, as TorchServe undoes a registration whose initial workers fail."""
    ts, _ = served
    handler = tmp_path / "broken.py"
    handler.write_text("raise RuntimeError('this handler cannot load')\n")
    subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")),
                    "--model-name", "broken", "--version", "1.0", "--handler", str(handler),
                    "--export-path", str(ts.store), "--force"], check=True)
    management = ts.client()
    try:
        with pytest.raises(Unavailable, match="start the workers of broken 1.0"):
            management.register("broken.mar", workers=1)
        assert "broken" not in management.names()
    finally:
        (ts.store / "broken.mar").unlink()  # the store is the other serving tests' too
