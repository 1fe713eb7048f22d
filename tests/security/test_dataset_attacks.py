"""Attacks on dataset uploads (docs/reliability.md, findings 10-12), each at a real API
process whose store is a real S3 server (SeaweedFS): bodies over MEC_MAX_DATASET_MB,
declared and streamed, refused while the API's memory stays low; a kill -9 of the API in
the middle of an upload leaves no version, no staging folder and no object, and the same
upload then succeeds; another project's key finds nothing on every dataset route; a
source prefix that leaves its place is refused."""

from __future__ import annotations

import io
import os
import signal
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from harness import base_env, open_platform, png
from test_limit_attacks import _rss, _send

LIMIT_MB = 64


@pytest.fixture(scope="module")
def api(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("dataset-attacks")
    bucket = s3_server.bucket("mec-dataset-attacks")
    env = base_env(root) | s3_server.env | {"MEC_STORAGE_URL": f"s3://{bucket}/platform",
                                            "MEC_MAX_DATASET_MB": str(LIMIT_MB)}
    platform = open_platform(root, env, "embedded")
    platform.start_api()
    platform.bucket, platform.s3 = bucket, s3_server.s3()
    platform.staging = root / "data" / "staging"
    yield platform
    platform.stop()


def archive(images: int, side: int = 16) -> bytes:
    """A .tar.gz of `images` PNGs in four class folders."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i in range(images):
            data = png(i, side=side)
            info = tarfile.TarInfo(f"class{i % 4}/{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def dataset(api, name: str) -> None:
    """A new dataset `name`, the only one of the project (the store then holds nothing)."""
    for found in api.client.get("/v1/datasets").json()["data"]:
        api.client.delete(f"/v1/datasets/{found['name']}")
    api.post("/v1/datasets", {"name": name})


def stored(api) -> list[str]:
    """Every object under the platform's store's datasets/."""
    listing = api.s3.list_objects_v2(Bucket=api.bucket, Prefix="platform/datasets/")
    return [o["Key"] for o in listing.get("Contents", [])]


def staged(api) -> list[str]:
    return sorted(p.name for p in api.staging.glob("*")) if api.staging.exists() else []


class Peak:
    """The highest RSS of a process while the block runs, above its RSS before."""

    def __init__(self, pid: int) -> None:
        self.pid, self.before, self.peak, self.done = pid, _rss(pid), 0, threading.Event()

    def __enter__(self):
        def watch():
            while not self.done.is_set():
                self.peak = max(self.peak, _rss(self.pid))
                time.sleep(0.01)
        self.watcher = threading.Thread(target=watch)
        self.watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.watcher.join()

    @property
    def grew_mb(self) -> float:
        return (self.peak - self.before) / 2**20


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_an_archive_over_the_limit_is_refused_within_50mb(api, chunked):
    dataset(api, "big")
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/gzip"}
    with Peak(api.api.pid) as peak:
        status = _send(api.port, "/v1/datasets/big/versions", headers, chunked)  # 1 GB
    print(f"1 GB, chunked={chunked}: {status}, RSS +{peak.grew_mb:.1f} MB")
    assert status == 413 and peak.grew_mb < 50
    assert api.client.get("/v1/datasets/big").json()["versions"] == []
    api.wait_for(lambda: staged(api) == [], 5, "the cut upload's folder to go")
    assert stored(api) == []


def test_an_upload_under_the_limit_goes_to_disk_not_to_memory(api):
    dataset(api, "garbage")
    body = os.urandom(2**20) * (LIMIT_MB - 4)  # 60 MiB: not an archive, checked on disk
    with Peak(api.api.pid) as peak:
        r = api.client.post("/v1/datasets/garbage/versions", content=body,
                            headers={"Content-Type": "application/octet-stream"})
    print(f"{len(body) >> 20} MiB of garbage: {r.status_code}, RSS +{peak.grew_mb:.1f} MB")
    assert r.status_code == 422 and r.json()["detail"].startswith("body:")
    assert peak.grew_mb < 50
    assert staged(api) == [] and stored(api) == []


@pytest.mark.slow  # a restart of the API and 1,200 images each: about 10 s on 2 busy cores
@pytest.mark.parametrize("phase", ["streaming", "checking"])
def test_a_kill_9_mid_upload_leaves_nothing_and_the_same_upload_then_succeeds(api, phase):
    dataset(api, "killed")
    data = archive(1200)
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall((f"POST /v1/datasets/killed/versions HTTP/1.1\r\nHost: api\r\n"
                   f"Authorization: Bearer {api.key}\r\nContent-Type: application/gzip\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode())
        if phase == "streaming":  # half the body, then the API dies waiting for the rest
            s.sendall(data[:len(data) // 2])
            api.wait_for(lambda: any(api.staging.glob("upload-*/upload")), 10, "staging")
        else:  # the whole body; the API dies while it checks the images
            s.sendall(data)
            api.wait_for(lambda: any(api.staging.glob("upload-*/version-*")), 20,
                         "the check under way", every=0.02)
        os.killpg(api.api.pid, signal.SIGKILL)
        api.api.wait()
    assert staged(api), "the killed upload left its folder"  # what the restart must clean
    api.start_api()

    assert staged(api) == []  # swept at the API's start
    assert api.client.get("/v1/datasets/killed").json()["versions"] == []
    assert stored(api) == []
    made = api.post("/v1/datasets/killed/versions", content=data,
                    headers={"Content-Type": "application/gzip"})
    assert made["number"] == 1 and made["images"] == 1200
    assert staged(api) == [] and len(stored(api)) == 1


def test_another_projects_key_finds_nothing_on_every_dataset_route(api):
    dataset(api, "secret")
    made = api.post("/v1/datasets/secret/versions", content=archive(8),
                    headers={"Content-Type": "application/gzip"})
    other = httpx.Client(base_url=api.url, timeout=30, headers={
        "Authorization": f"Bearer {api.new_key('other-team', '--project', 'other')}"})
    archive_headers = {"Content-Type": "application/gzip"}
    answers = {
        "list": other.get("/v1/datasets"),
        "get": other.get("/v1/datasets/secret"),
        "upload": other.post("/v1/datasets/secret/versions", content=archive(8),
                             headers=archive_headers),
        "source": other.post("/v1/datasets/secret/versions",
                             json={"source": f"s3://{api.bucket}/elsewhere"}),
        "delete": other.delete("/v1/datasets/secret"),
        "train": other.post("/v1/jobs", json={"kind": "pretrain", "config": {
            "dataset": "imagefolder", "data_dir": "dataset://secret"}}),
        "train version": other.post("/v1/jobs", json={"kind": "pretrain", "config": {
            "dataset": "imagefolder", "data_dir": "dataset://secret/1"}}),
    }
    assert answers.pop("list").json()["data"] == []
    for route, r in answers.items():
        assert r.status_code == 404, (route, r.text)
        assert "secret" in r.json()["detail"], (route, r.text)
    assert other.get("/v1/jobs").json()["count"] == 0

    # a body to another project's dataset is answered before it is read: 50 MB declared,
    # none sent
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.settimeout(5)
        s.sendall((f"POST /v1/datasets/secret/versions HTTP/1.1\r\nHost: api\r\n"
                   f"Authorization: {other.headers['Authorization']}\r\n"
                   f"Content-Type: application/gzip\r\nContent-Length: {50 << 20}\r\n\r\n"
                   ).encode())
        assert s.recv(4096).split(b" ", 2)[1] == b"404"

    # the same name in the other project is a dataset of its own
    other.post("/v1/datasets", json={"name": "secret"}).raise_for_status()
    assert other.get("/v1/datasets/secret").json()["versions"] == []
    mine = api.client.get("/v1/datasets/secret").json()
    assert [v["digest"] for v in mine["versions"]] == [made["digest"]]
    other.close()


DOTS, PATTERN, OWN = "'.' and '..' are not parts", "should match pattern", "own store"


@pytest.mark.parametrize(("source", "reason"), [
    ("s3://team/../mec-dataset-attacks/platform", DOTS),
    ("s3://team/images/../../mec-dataset-attacks/platform/datasets", DOTS),
    ("s3://team/./images", DOTS),
    ("s3://team/images/..", DOTS),
    ("s3://team\\..\\images", PATTERN),  # was a 500 (botocore refused the bucket)
    ("s3://team/images\u0000.png", PATTERN),
    ("s3://../images", PATTERN),
    ("file:///etc", PATTERN),
    ("/etc/passwd", PATTERN),
    ("s3://mec-dataset-attacks", OWN),  # the store holds every project's files
    ("s3://mec-dataset-attacks/platform", OWN),
    ("s3://mec-dataset-attacks/platform/datasets/1", OWN),
])
def test_a_source_prefix_that_leaves_its_place_is_refused(api, source, reason):
    dataset(api, "sourced")
    r = api.client.post("/v1/datasets/sourced/versions", json={"source": source})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("source") and reason in r.json()["detail"], r.text
    assert api.client.get("/v1/datasets/sourced").json()["versions"] == []


def test_two_uploads_at_once_to_one_dataset__one_version_each_or_a_409_and_no_orphan(api):
    dataset(api, "raced")
    bodies = [archive(600), archive(601)]  # two archives, checked at the same time
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda body: httpx.post(
            f"{api.url}/v1/datasets/raced/versions", content=body, timeout=60, headers={
                "Authorization": f"Bearer {api.key}", "Content-Type": "application/gzip"}),
            bodies))
    codes = sorted(r.status_code for r in answers)
    print(f"two uploads at once: {codes}")
    assert codes in ([201, 201], [201, 409]), [r.text[:300] for r in answers]  # was a 500
    for body, r in zip(bodies, answers):
        if r.status_code == 409:
            assert "send it again" in r.json()["detail"]
            again = api.post("/v1/datasets/raced/versions", content=body,
                             headers={"Content-Type": "application/gzip"})
            assert again["number"] == 2
    versions = api.client.get("/v1/datasets/raced").json()["versions"]
    assert [v["number"] for v in versions] == [1, 2]
    assert len(stored(api)) == 2  # one object per version: the loser's was removed
