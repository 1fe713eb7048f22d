"""The object store on file:// and on a real S3 server (SeaweedFS), and the local cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mec_platform.storage import FileStore, StorageError, evict, fetch, open_store


def test_an_object_is_written_whole_read_back_and_deleted_by_prefix(store, tmp_path):
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(9 << 20))  # over boto3's 8 MiB: a multipart upload
    stored = store.put("datasets/1/2/a.tar", source)
    assert stored.size == 9 << 20 and store.stat("datasets/1/2/a.tar") == stored
    copy = tmp_path / "copy"
    store.get("datasets/1/2/a.tar", copy)
    assert copy.read_bytes() == source.read_bytes()
    source.write_bytes(b"changed")
    assert store.put("datasets/1/2/a.tar", source).digest != stored.digest
    store.delete_prefix("datasets/1")
    assert store.stat("datasets/1/2/a.tar") is None
    with pytest.raises(StorageError):
        store.get("datasets/1/2/a.tar", copy)


def test_db_upgrade_creates_the_bucket_of_an_s3_storage_url(s3_server, tmp_path):
    bucket = f"fresh{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")} | s3_server.env
    done = subprocess.run([sys.executable, "-m", "mec_client", "db", "upgrade"], env=env | {
        "MEC_DATA_DIR": str(tmp_path), "MEC_STORAGE_URL": f"s3://{bucket}/p"},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    s3_server.s3().head_bucket(Bucket=bucket)  # raises when it does not exist


def test_keys_cannot_leave_the_store(store, tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    for key in ("../outside", "a/../../outside", "/etc/passwd"):
        with pytest.raises(StorageError, match="leaves the store"):
            store.put(key, tmp_path / "x")


def test_a_file_store_is_read_in_place_and_an_s3_object_through_the_cache(store, tmp_path):
    (tmp_path / "x").write_bytes(b"content")
    store.put("k/x.bin", tmp_path / "x")
    cache = tmp_path / "cache"
    local = fetch(store, "k/x.bin", cache, bound=1 << 20)
    assert local.read_bytes() == b"content"
    if isinstance(store, FileStore):
        assert local == store.root / "k" / "x.bin" and not cache.exists()
    else:
        assert local.is_relative_to(cache)
        assert fetch(store, "k/x.bin", cache, bound=1 << 20) == local  # downloaded once
        (tmp_path / "x").write_bytes(b"new content")
        store.put("k/x.bin", tmp_path / "x")
        assert fetch(store, "k/x.bin", cache, bound=1 << 20).read_bytes() == b"new content"


def test_the_cache_drops_the_least_recently_used_entries_beyond_its_bound(tmp_path):
    for i, age in enumerate((300, 100, 200)):
        entry = tmp_path / f"e{i}"
        entry.mkdir()
        (entry / "f").write_bytes(b"x" * 1000)
        os.utime(entry, (time.time() - age, time.time() - age))
    removed = evict(tmp_path, bound=2000)
    assert removed == [tmp_path / "e0"]  # the oldest use; e1 and e2 fit the bound
    assert evict(tmp_path, bound=0, keep=tmp_path / "e1") == [tmp_path / "e2"]


def test_a_storage_url_is_file_or_s3():
    for url in ("http://x", "file://", "s3://", "/tmp/x"):
        with pytest.raises(StorageError, match="file:///path or s3://bucket/prefix"):
            open_store(url)


def test_a_presigned_url_reads_an_archive_and_torchserve_s_pattern_permits_only_those(
        s3_server, monkeypatch, tmp_path):
    import re

    import httpx

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{s3_server.bucket(f't{time.monotonic_ns()}')}/p", s3_server.url)
    (tmp_path / "a.mar").write_bytes(b"archive")
    store.put("archives/mec-1-v1.mar", tmp_path / "a.mar")
    url, pattern = store.presigned("archives/mec-1-v1.mar"), store.presigned_pattern("archives")
    assert httpx.get(url).content == b"archive"  # no credentials needed
    assert re.fullmatch(pattern, url, re.IGNORECASE)  # as TorchServe matches allowed_urls
    for other in ("datasets/1/image-folder.tar", "archives/x/a.mar", "jobs/archives/a.mar"):
        assert not re.fullmatch(pattern, store.presigned(other), re.IGNORECASE)


def test_what_a_row_records_is_read_back_on_any_host_and_removed(platform_store, tmp_path):
    from mec_platform import storage

    staged = storage.work_folder("uploads/1/checkpoint.pt")
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"weights")
    ref = storage.keep(staged, "uploads/1/checkpoint.pt", move=True)
    if isinstance(platform_store, FileStore):  # written in place: a path, as rows held
        assert ref == str(staged) and staged.exists()
    else:
        assert ref == platform_store.url("uploads/1/checkpoint.pt") and not staged.exists()
        assert storage.local_file(ref).is_relative_to(tmp_path / "cache")
    assert storage.local_file(ref).read_bytes() == b"weights"
    storage.remove(ref)
    assert platform_store.stat("uploads/1/checkpoint.pt") is None
    with pytest.raises(StorageError, match="not in this platform's store"):
        storage.local_file("s3://another-bucket/uploads/1/checkpoint.pt")
