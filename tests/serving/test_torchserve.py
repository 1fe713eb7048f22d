"""Our handler inside a real TorchServe on free loopback ports, over HTTP, and TorchServe's
client (serving.client) against it."""

import asyncio
import io
import json
import socket
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from mec_core.data import synthetic
from serving.client import Answer, AsyncTorchServe, KeyRing, Keys, TorchServe, Unavailable
from serving.embedder import Embedder
from serving.reference_set import ReferenceSet
from serving.torchserve import (
    LOG4J,
    MAX_DEFAULT_WORKERS,
    WORKER_OMP_SPINCOUNT,
    LocalTorchServe,
    WorkerPlan,
    ephemeral_ports,
    frontend_jvm_options,
    unused_ports,
    worker_plan,
)


def png_of(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def bomb() -> bytes:
    """A few kB of PNG that decodes to 100 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000), 0).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    _, export_dir, store = trained
    ports = unused_ports(3)
    ts = LocalTorchServe(tmp_path_factory.mktemp("ts"), store, *ports).start()
    try:
        management = ts.client()
        management.register("tiny.mar", batch_size=8, max_batch_delay_ms=200)
        management.register("tiny-knn.mar", batch_size=8, max_batch_delay_ms=50)
        client = httpx.Client(base_url=ts.inference_url, timeout=60,
                              headers={"Authorization": f"Bearer {ts.keys().inference}"})
        yield ts, client, export_dir
        client.close()
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def images():
    return synthetic("test", n=16).images


def test_embedding__equals_mec_core_on_the_same_image(served, images):
    _, client, export_dir = served
    direct = Embedder(export_dir).embed(images[:4])
    for image, expected in zip(images[:4], direct):
        r = client.post("/predictions/tiny", content=png_of(image))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        got = torch.tensor(r.json()["embeddings"][0])
        assert (got - expected).abs().max() < 1e-4
        assert r.json()["dim"] == len(expected)


def test_knn__equals_brute_force_topk_in_torch(served, images, trained):
    _, client, _ = served
    _, export_dir, store = trained
    with zipfile.ZipFile(store / "tiny-knn.mar") as mar:
        mar.extract("gallery.faiss", store / "unpacked")
        mar.extract("gallery.json", store / "unpacked")
    gallery = ReferenceSet.load(store / "unpacked")
    bank = torch.from_numpy(gallery.index.reconstruct_n(0, len(gallery)))
    queries = Embedder(export_dir).embed(images[:5])
    scores, idx = (queries @ bank.T).topk(5, dim=1)
    for image, row_s, row_i in zip(images[:5], scores, idx):
        r = client.post("/predictions/tiny-knn", files={"image": png_of(image)},
                        data={"k": "5", "vote": "true"})
        assert r.status_code == 200, r.text
        got = r.json()["neighbours"][0]
        assert [n["id"] for n in got] == [gallery.ids[i] for i in row_i.tolist()]
        assert np.allclose([n["score"] for n in got], row_s.numpy(), atol=1e-4)
        assert r.json()["vote"][0] in {n["label"] for n in got}


@pytest.mark.parametrize("kwargs,status,message", [
    ({"content": b"definitely not an image"}, 400, "known format"),
    ({"content": b""}, 400, None),
    ({"content": png_of(synthetic("test", n=1).images[0])[:120]}, 400, "corrupt"),
    ({"content": b"0" * (11 * 1024 * 1024)}, 413, None),
    ({"json": {"images": ["not-base64!"]}}, 400, "not base64"),
    ({"content": bomb()}, 400, "over the limit"),  # decompression bomb
])
def test_bad_requests__get_4xx_and_the_model_keeps_serving(served, images, kwargs, status,
                                                           message):
    _, client, _ = served
    r = client.post("/predictions/tiny", **kwargs)
    assert r.status_code == status, r.text
    if message:
        assert message in r.text
    assert client.post("/predictions/tiny", content=png_of(images[0])).status_code == 200


def test_knn__k_above_the_cap_is_refused(served, images):
    _, client, _ = served
    r = client.post("/predictions/tiny-knn", files={"image": png_of(images[0])},
                    data={"k": "1000"})
    assert r.status_code == 400 and "k must be between 1 and 100" in r.text


def test_dynamic_batching__concurrent_requests_arrive_in_batches(served, images):
    _, client, _ = served
    bodies = [png_of(images[i % len(images)]) for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: client.post("/predictions/tiny", content=b), bodies))
    assert all(a.status_code == 200 for a in answers)
    sizes = [a.json()["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes  # TorchServe really batched concurrent requests


def test_security__token_required_and_management_on_loopback_only(served, images):
    ts, _, _ = served
    r = httpx.post(f"{ts.inference_url}/predictions/tiny", content=png_of(images[0]))
    assert r.status_code in (400, 401) and "Token Authorization failed" in r.text
    config = ts.config.read_text()
    assert "management_address=http://127.0.0.1:" in config
    assert "allowed_urls=" in config and "max_request_size=10485760" in config
    port = int(ts.management_url.rsplit(":", 1)[1])
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for address in [a for a in addresses if not a.startswith("127.") and ":" not in a]:
        with pytest.raises(OSError):  # nothing listens there: connection refused
            socket.create_connection((address, port), timeout=2).close()
    unauthorised = httpx.get(f"{ts.management_url}/models")
    assert unauthorised.status_code in (400, 401)


def test_mec_embed__offline_equals_served(served, images, trained, tmp_path):
    _, client, _ = served
    checkpoint, _, _ = trained
    for i, image in enumerate(images[:3]):
        (tmp_path / f"{i}.png").write_bytes(png_of(image))
    (tmp_path / "notes.txt").write_text("ignored")
    out = tmp_path / "emb.npy"
    subprocess.run([sys.executable, "-m", "mec_client", "embed", "--checkpoint",
                    str(checkpoint),
                    str(tmp_path), "--out", str(out), "--batch-size", "2"], check=True,
                   capture_output=True)
    offline = np.load(out)
    side = json.loads((tmp_path / "emb.npy.json").read_text())
    assert [f.rsplit("/", 1)[1] for f in side["files"]] == ["0.png", "1.png", "2.png"]
    # no version label of its own: a deployment's number is the one version users see
    assert side == {"files": side["files"], "checkpoint": str(checkpoint)}
    for row, image in zip(offline, images[:3]):
        served_vec = client.post("/predictions/tiny", content=png_of(image)).json()
        assert np.abs(row - np.array(served_vec["embeddings"][0])).max() < 1e-4


def test_workers_use_the_torch_threads_of_their_archive(served, images):
    """package(torch_threads=1): each TorchServe worker computes on one thread, as
    worker_plan() shares the cores among the workers (docs/performance.md)."""
    ts, client, _ = served
    assert client.post("/predictions/tiny", content=png_of(images[0])).status_code == 200
    log = (ts.home / "logs" / "ts_log.log").read_text()
    assert "mec handler: embed on cpu, 1 torch threads" in log
    assert "mec handler: knn on cpu, 1 torch threads" in log


def test_the_frontend_runs_with_the_jvm_options_of_a_small_host(served):
    """On at most 2 cores TorchServe's Java process gets frontend_jvm_options() (two
    ForkJoin threads, C1 only, the serial collector: docs/performance.md); on more, the
    JVM's own defaults."""
    ts, _, _ = served
    java, _ = ts.processes()
    assert len(java) == 1
    assert len(frontend_jvm_options(cores=2)) == 3 and frontend_jvm_options(cores=16) == []
    flags = java[0].cmdline()
    assert "-Dlog4j.configurationFile=file://" + str(LOG4J) in flags
    for option in frontend_jvm_options():
        assert option in flags


def test_the_workers_spin_briefly_unless_the_host_says_otherwise(served, tmp_path):
    """TorchServe's Python workers inherit GOMP_SPINCOUNT (WORKER_OMP_SPINCOUNT: after a
    forward their idle OpenMP threads give the cores back sooner than libgomp's default of
    300,000 spins, docs/performance.md); a value in the host's environment wins."""
    ts, _, _ = served
    _, workers = ts.processes()
    assert workers
    for worker in workers:
        assert worker.environ()["GOMP_SPINCOUNT"] == str(WORKER_OMP_SPINCOUNT)
    own = LocalTorchServe(tmp_path, tmp_path / "store", *unused_ports(3),
                          env={"GOMP_SPINCOUNT": "300000"})
    assert own.env["GOMP_SPINCOUNT"] == "300000"


def test_unused_ports__free_now_and_never_an_outgoing_connections():
    """Ports below the ephemeral range: a connection made between the choice and
    TorchServe's bind cannot take one (TorchServe then exits at start)."""
    ports = unused_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p < ephemeral_ports().start for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_start__a_port_in_use_is_named_in_the_error(tmp_path):
    """TorchServe exits when it cannot bind: start() says why, from its output. (The
    port is bound, not listened on: TorchServe's readiness would wait on that socket.)"""
    ports = unused_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[1]))
        ts = LocalTorchServe(tmp_path / "ts", tmp_path / "store", *ports)
        with pytest.raises(RuntimeError, match=f"Failed to bind to address: "
                                               f"http://127.0.0.1:{ports[1]}"):
            ts.start()


def test_a_batch_writes_no_line_to_torchserves_log(trained, images, tmp_path):
    """The access log has a line per request; TorchServe's own log has none per batch (by
    default three come from the worker's stdout and one from the frontend: 6 GB a day at
    200 requests/s). Read once TorchServe has stopped: both logs are written
    asynchronously."""
    _, _, store = trained
    ts = LocalTorchServe(tmp_path / "ts", store, *unused_ports(3)).start()
    try:
        ts.client().register("tiny.mar", batch_size=1)
        headers = {"Authorization": f"Bearer {ts.keys().inference}"}
        for image in images[:20]:
            assert httpx.post(f"{ts.inference_url}/predictions/tiny", headers=headers,
                              content=png_of(image)).status_code == 200
    finally:
        ts.stop()
    log = (tmp_path / "ts" / "logs" / "ts_log.log").read_text()
    access = (tmp_path / "ts" / "logs" / "access_log.log").read_text()
    # the last lines may be lost with the process; the first made it to disk in both logs
    assert access.count("POST /predictions/tiny") >= 10
    assert "mec handler: embed on cpu" in log  # what a worker says once is kept
    for per_batch in ("Backend received inference", "[METRICS]", "Backend response time"):
        assert per_batch not in log


def test_worker_plan__one_worker_per_core_up_to_four_sharing_the_cores():
    assert worker_plan(cores=2) == WorkerPlan(workers=2, threads=1, batch_size=4)
    assert worker_plan(cores=16) == WorkerPlan(MAX_DEFAULT_WORKERS, 16 // MAX_DEFAULT_WORKERS,
                                               2)
    assert worker_plan(cores=16, gpu=True) == WorkerPlan(1, 16, 8)
    assert worker_plan(workers=3, cores=2) == WorkerPlan(3, 1, 2)
    assert worker_plan(workers=1, threads=2, batch_size=16, cores=8) == WorkerPlan(1, 2, 16)


def test_key_ring__renews_keys_that_expire_soon(tmp_path):
    """Keys of 1 minute expire within the renewal margin: the ring asks TorchServe for new
    ones, which it writes to key_file.json; the new inference key is accepted, and none is
    held for the event loop while it expires soon."""
    ts = LocalTorchServe(tmp_path / "ts", tmp_path / "store", *unused_ports(3),
                         extra={"token_expiration_min": "1"}).start()
    try:
        before = Keys.read(ts.home)
        assert set(before.expiring()) == {"management", "inference"}
        assert before.expiring(within_s=-120) == []  # not expired yet
        ring = KeyRing(ts.home, ts.management_url)
        renewed = ring.get("inference")
        after = Keys.read(ts.home)
        assert renewed == after.inference != before.inference
        assert after.management != before.management
        assert after.expires["inference"] >= before.expires["inference"]
        assert ring.held("inference") is None
        ping = httpx.get(f"{ts.inference_url}/ping",
                         headers={"Authorization": f"Bearer {renewed}"})
        assert ping.status_code == 200
    finally:
        ts.stop()


def test_key_ring__a_refused_key_is_renewed_once_for_all_holders(served):
    """Two holders (two processes) of one TorchServe's keys: the first whose key is
    refused renews it; the other, refused the same key, takes the new one from the key
    file instead of renewing again (which would refuse the first's)."""
    ts, _, _ = served
    first, second = KeyRing(ts.home, ts.management_url), KeyRing(ts.home, ts.management_url)
    old = first.get("inference")
    assert second.get("inference") == old == first.held("inference")
    new = second.get("inference", refused=old)
    assert new != old and Keys.read(ts.home).inference == new
    assert first.get("inference", refused=old) == new == Keys.read(ts.home).inference


def test_clients__send_again_with_a_renewed_key_when_the_held_one_is_refused(served, images):
    """The sync and the async face: another holder renews the inference key, the one they
    hold is refused, they renew theirs and the request is answered."""
    ts, _, _ = served
    sync = ts.client()
    parallel = AsyncTorchServe(ts.inference_url, ts.management_url, ts.home)
    other = KeyRing(ts.home, ts.management_url)
    image = png_of(images[0])
    expected = sync.predict("tiny", image, "image/png").json()["embeddings"]

    async def before_and_after_a_renewal() -> list[Answer]:
        try:
            before = await parallel.predict("tiny", image, "image/png")
            other.get("inference", refused=other.get("inference"))  # behind their backs
            return [before, await parallel.predict("tiny", image, "image/png")]
        finally:
            await parallel.http.close()

    answers = [*asyncio.run(before_and_after_a_renewal()),
               sync.predict("tiny", image, "image/png")]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["embeddings"] == expected for a in answers)
    assert sync.keys.held("inference") == parallel.keys.held("inference") == \
        Keys.read(ts.home).inference


def test_embed__vectors_of_readable_images_and_why_the_others_were_not(served, images):
    """A gallery add of 10 images (two requests of PER_REQUEST = 8 and 2) with two bad ones:
    the good ones in order, the bad ones by position with the handler's reason."""
    ts, _, export_dir = served
    good = [png_of(images[i]) for i in range(8)]
    batch = good[:3] + [b"not an image"] + good[3:] + [good[0][:120]]
    vectors, bad = ts.client().embed("tiny", batch)
    assert sorted(bad) == [3, 9] and "known format" in bad[3] and "corrupt" in bad[9]
    expected = Embedder(export_dir).embed(images[:8]).numpy()
    assert vectors.shape == expected.shape and np.abs(vectors - expected).max() < 1e-4


def test_clients__unavailable_when_torchserve_is_not_there(tmp_path):
    """No key file (TorchServe never started) and nothing listening: Unavailable, which the
    API answers as 502, from both faces."""
    inference, management = (f"http://127.0.0.1:{p}" for p in unused_ports(2))
    sync = TorchServe(inference, management, tmp_path)
    with pytest.raises(Unavailable, match="keys cannot be read"):
        sync.predict("tiny", b"x", "image/png")
    assert not sync.ready()
    (tmp_path / "key_file.json").write_text(json.dumps(
        {"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}))
    with pytest.raises(Unavailable, match="unreachable"):
        sync.predict("tiny", b"x", "image/png")
    parallel = AsyncTorchServe(inference, management, tmp_path)

    async def predict() -> Answer:
        try:
            return await parallel.predict("tiny", b"x", "image/png")
        finally:
            await parallel.http.close()

    with pytest.raises(Unavailable, match="unreachable"):
        asyncio.run(predict())


@pytest.mark.parametrize("status,content,reason,refused", [
    (400, b'{"error": "images[2]: corrupt"}', "images[2]: corrupt", False),
    (503, b'{"code": 503, "message": "No worker"}', "No worker", False),
    (400, b'{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization '
          b'failed"}', "Token Authorization failed", True),
    (502, b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>", False),
    (500, b"[1, 2]", "[1, 2]", False),
])
def test_answer__reason_and_refused_key(status, content, reason, refused):
    answer = Answer(status, content)
    assert answer.reason == reason and answer.key_refused is refused
    with pytest.raises(Unavailable, match=f"refused to list its models: {status}"):
        answer.expect("list its models")
    assert Answer(404, content).expect("unregister", 404).status_code == 404
