"""Finding 5, as the attack: 1 GB bodies at a real API process, with no key and with one,
declared or streamed; each is refused while the API's memory stays within +50 MB."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest
from harness import base_env, open_platform
from sqlalchemy.orm import Session

from mec_platform.db import make_engine
from mec_platform.tables import Gallery, Job, Model

GB = 2**30
CHUNK = b"x" * 2**20
MULTIPART = (b'--x\r\nContent-Disposition: form-data; name="checkpoint"; filename="c.pt"\r\n'
             b"Content-Type: application/octet-stream\r\n\r\n")  # then the file's bytes


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _send(port: int, path: str, headers: dict[str, str], chunked: bool,
          first: bytes = b"") -> int:
    """POST `first` and 1 GB (as fast as the API takes it) until the API answers; its
    status."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(GB)}
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers | framing).items())
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: api\r\n{head}\r\n".encode())
        s.settimeout(10)
        if first:
            s.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        piece = (f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n") if chunked else CHUNK
        try:
            for _ in range(GB // len(CHUNK)):
                if select.select([s], [], [], 0)[0]:
                    break  # answered already
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the API stopped reading and closed
        answer = s.recv(4096)
    return int(answer.split(b" ", 2)[1])


def _gallery_g(url: str) -> None:
    """Gallery 'g' of project default, on a model recorded as serving (an add's body is
    read only for a gallery that exists)."""
    engine = make_engine(url)
    with Session(engine) as s:
        job = Job(kind="pretrain", project="default", name="j", queue="gpu", config={},
                  status="succeeded")
        s.add(job)
        s.flush()
        model = Model(job_id=job.id, project="default", name="m", backbone="convnet",
                      dataset="synthetic", artifacts={}, deployment={
                          "status": "serving", "number": 1, "dim": 4, "name": "mec-1"})
        s.add(model)
        s.flush()
        s.add(Gallery(project="default", name="g", model_id=model.id, model_version=1, dim=4,
                      seq=0))
        s.commit()
    engine.dispose()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    env = base_env(root)
    platform = open_platform(root, env, "embedded")
    _gallery_g(f"sqlite:///{root / 'data' / 'mec.db'}")
    platform.start_api()
    yield platform
    platform.stop()


@pytest.mark.parametrize(("path", "keyed", "content_type", "chunked", "status"), [
    ("/v1/jobs", False, "application/json", False, 413),
    ("/v1/jobs", False, "application/json", True, 401),
    ("/v1/jobs", True, "application/json", True, 413),
    ("/v1/models/1/embed", True, "image/png", True, 413),  # model 1 is recorded as served
    ("/v1/galleries/g/items", True, "application/json", True, 413),
    ("/v1/galleries/g/items", True, "application/x-ndjson", True, 413),
    ("/v1/galleries/none/items", True, "application/json", True, 404),  # body unread
    ("/v1/models", True, "multipart/form-data; boundary=x", True, 413),
])
def test_a_1gb_body_is_refused_within_50mb(api, path, keyed, content_type, chunked, status):
    pid = api.api.pid
    before, peak, done = _rss(pid), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    headers = {"Content-Type": content_type} | (
        {"Authorization": f"Bearer {api.key}"} if keyed else {})
    try:
        got = _send(api.port, path, headers, chunked,
                    MULTIPART if content_type.startswith("multipart/") else b"")
    finally:
        done.set()
        watcher.join()
    assert got == status
    grew = (peak[0] - before) / 2**20
    print(f"{path} {content_type} chunked={chunked}: {status}, RSS +{grew:.1f} MB")
    assert grew < 50, f"the API grew by {grew:.0f} MB"
