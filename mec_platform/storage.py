"""The object store behind a storage URL: `file:///path` (a folder: the embedded default)
or `s3://bucket/prefix` (any S3-compatible server). Objects are written whole or not at all
(a file is renamed into place; an S3 upload is completed only when every part is in), and
read back into a bounded local cache keyed by the object's digest, so that the API, the
workers and TorchServe on different hosts share nothing but the store."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from mec_platform.errors import Unavailable
from mec_platform.settings import get_settings


class StorageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Stored:
    size: int
    digest: str  # changes whenever the content does (a checksum or the server's ETag)


class FileStore:
    """Objects as files under `root`; keys are relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def url(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def ref(self, key: str) -> str:
        """What a row records for the object: its path, as rows always have."""
        return str(self._path(key))

    def folder(self, key: str) -> Path | None:
        """Where objects under `key` are written in place (a file:// store only)."""
        return self._path(key)

    def key_of(self, url: str) -> str | None:
        """None: a file:// store's rows hold paths, never s3:// URLs."""
        return None

    def prepare(self) -> None:
        """Nothing to do: folders are made as objects are written."""

    def put(self, key: str, source: Path, move: bool = False) -> Stored:
        """`move`: the source is given up (renamed into place when on the same disk)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() == target:  # written in place (folder())
            return self.stat(key)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            if move and source.stat().st_dev == target.parent.stat().st_dev:
                os.replace(source, target)
            else:
                shutil.copyfile(source, partial)
                os.replace(partial, target)
                if move:
                    source.unlink()
        finally:
            partial.unlink(missing_ok=True)
        return self.stat(key)

    def get(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._existing(key), dest)

    def local(self, key: str) -> Path | None:
        """The object's own file: read in place, no copy."""
        return self._existing(key)

    def stat(self, key: str) -> Stored | None:
        path = self._path(key)
        if not path.is_file():
            return None
        info = path.stat()
        return Stored(info.st_size, f"{info.st_size}-{info.st_mtime_ns}-{info.st_ino}")

    def keys(self, prefix: str) -> list[str]:
        """The keys of the objects under `prefix` (a folder), sorted."""
        folder = self._path(prefix)
        return sorted(str(p.relative_to(self.root)) for p in folder.rglob("*")
                      if p.is_file()) if folder.is_dir() else []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"{self.url(key)} is not in the store")
        return path

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} leaves the store")
        return path


class S3Store:
    """Objects in an S3 bucket under a prefix (boto3: multipart above 8 MiB, completed only
    when whole; an interrupted upload leaves no object)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3  # only for s3:// URLs
        from botocore.config import Config

        self.bucket, self.prefix, self.endpoint_url = bucket, prefix.strip("/"), endpoint_url
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            retries={"max_attempts": 5, "mode": "standard"}, signature_version="s3v4"))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def ref(self, key: str) -> str:
        return self.url(key)

    def folder(self, key: str) -> Path | None:
        return None

    def key_of(self, url: str) -> str | None:
        """The key of an s3:// URL of this store, None for any other URL."""
        base = f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        return url[len(base):] if url.startswith(base) else None

    def presigned(self, key: str, seconds: int = 900) -> str:
        """An HTTP URL that reads the object without credentials, for `seconds`."""
        return self.s3.generate_presigned_url("get_object", ExpiresIn=seconds, Params={
            "Bucket": self.bucket, "Key": self._key(key)})

    def prepare(self) -> None:
        """Create the bucket if it does not exist (`mec db upgrade` calls this)."""
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.s3.create_bucket(Bucket=self.bucket)

    def put(self, key: str, source: Path, move: bool = False) -> Stored:
        self.s3.upload_file(str(source), self.bucket, self._key(key))
        if move:
            source.unlink()
        return self.stat(key)

    def get(self, key: str, dest: Path, etag: str | None = None) -> None:
        """Download the object; with `etag`, only that content (StorageError otherwise)."""
        from botocore.exceptions import ClientError

        try:
            if etag is None:
                self.s3.download_file(self.bucket, self._key(key), str(dest))
                return
            answer = self.s3.get_object(Bucket=self.bucket, Key=self._key(key),
                                        IfMatch=f'"{etag}"')
            with open(dest, "wb") as out:
                shutil.copyfileobj(answer["Body"], out, 1 << 20)
        except ClientError as exc:
            raise StorageError(f"{self.url(key)}: {exc}") from exc

    def presigned_pattern(self, under: str) -> str:
        """A regular expression of the presigned() URLs of the `.mar` files under `under`
        (what TorchServe's `allowed_urls` must permit)."""
        base = self.presigned(f"{under.strip('/')}/x.mar").partition("?")[0][:-len("x.mar")]
        return re.escape(base) + r"[^/?]+\.mar\?.*"

    def listing(self, under: str = "") -> list[tuple[str, str]]:
        """(key under the prefix, ETag) of every object under the prefix (and `under`);
        Unavailable when the store cannot be asked (no credentials, unreachable)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        base = f"{self.prefix}/" if self.prefix else ""
        if under:
            base, under = f"{base}{under.strip('/')}/", f"{under.strip('/')}/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                 Prefix=base)
        try:
            return [(under + o["Key"][len(base):], o["ETag"].strip('"')) for page in pages
                    for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        except (ClientError, NoCredentialsError) as exc:  # the source cannot be read here
            raise StorageError(f"s3://{self.bucket}/{base}: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"the object store cannot be read now ({exc})") from exc

    def local(self, key: str) -> Path | None:
        return None

    def stat(self, key: str) -> Stored | None:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"{self.url(key)}: {exc}") from exc
        return Stored(head["ContentLength"], head["ETag"].strip('"'))

    def keys(self, prefix: str) -> list[str]:
        return sorted(key for key, _ in self.listing(prefix))

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix).rstrip("/") + "/")
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def _key(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise StorageError(f"key {key!r} leaves the store")
        return f"{self.prefix}/{key}" if self.prefix else key


Store = FileStore | S3Store


def open_store(url: str, endpoint_url: str | None = None) -> Store:
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path:
        return FileStore(Path(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        return S3Store(parts.netloc, parts.path, endpoint_url)
    raise StorageError(f"storage URL must be file:///path or s3://bucket/prefix, got {url!r}")


@lru_cache
def get_store() -> Store:
    """This process's store (MEC_STORAGE_URL)."""
    settings = get_settings()
    return open_store(settings.storage_url, settings.s3_endpoint_url)


def cache_entry(store: Store, key: str, cache_dir: Path) -> Path:
    """The cache folder for the object's current content (named by its URL and digest, so
    a changed object gets a new one)."""
    stored = store.stat(key)
    if stored is None:
        raise StorageError(f"{store.url(key)} is not in the store")
    name = hashlib.sha256(f"{store.url(key)}\0{stored.digest}".encode()).hexdigest()[:32]
    entry = cache_dir / name
    entry.mkdir(parents=True, exist_ok=True)
    return entry


def fetch(store: Store, key: str, cache_dir: Path, bound: int) -> Path:
    """A local file with the object's content: the object itself on a file:// store, else
    a copy in its cache entry (downloaded once, then shared by every job of this host)."""
    if (path := store.local(key)) is not None:
        return path
    entry = cache_entry(store, key, cache_dir)
    target = entry / Path(key).name
    if not target.is_file():
        partial = entry / f".{uuid.uuid4().hex}.partial"
        try:
            store.get(key, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    touch(entry, cache_dir, bound)
    return target


def touch(entry: Path, cache_dir: Path, bound: int) -> None:
    """Mark a cache entry as used now (the last to go), then keep the cache in its bound."""
    os.utime(entry)
    evict(cache_dir, bound, keep=entry)


def evict(cache_dir: Path, bound: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries of `cache_dir` until it holds `bound` bytes
    or less (never `keep`); returns the entries removed."""
    entries = [(e.stat().st_mtime, e, _size(e)) for e in cache_dir.iterdir() if e.is_dir()]
    total, removed = sum(size for _, _, size in entries), []
    for _, entry, size in sorted(entries, key=lambda x: x[0]):
        if total <= bound:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            removed.append(entry)
    return removed


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def put_bytes(key: str, data: bytes) -> None:
    """Store a small object from memory (whole or not at all)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "object"
        path.write_bytes(data)
        get_store().put(key, path)


def read_bytes(key: str) -> bytes:
    """A small object's content (StorageError if there is none)."""
    store = get_store()
    if (path := store.local(key)) is not None:
        return path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "object"
        store.get(key, path)
        return path.read_bytes()


def work_folder(key: str) -> Path:
    """Where this host writes the objects under `key` before storing them: the store's own
    folder on a file:// store (written in place, nothing copied), else under this host's
    artifact_root."""
    return get_store().folder(key) or get_settings().artifact_root / key


def keep(source: Path, key: str, move: bool = False) -> str:
    """Store a file (whole or not at all); returns the reference a row records: its path
    on a file:// store, its s3:// URL on an S3 store. `move`: then remove `source` (unless
    it is the stored file itself, written in place)."""
    store = get_store()
    store.put(key, source, move=move)
    return store.ref(key)


def local_file(ref: str) -> Path:
    """A file on this host with the content of a stored reference: a path (a file://
    store's, and every row from before the store) as it is; an s3:// URL of this store
    fetched into this host's cache (once per content)."""
    if not ref.startswith("s3://"):
        return Path(ref)
    store, settings = get_store(), get_settings()
    key = store.key_of(ref)
    if key is None:
        raise StorageError(f"{ref} is not in this platform's store ({settings.storage_url})")
    return fetch(store, key, settings.cache_dir, settings.cache_mb << 20)


def remove(ref: str) -> None:
    """Remove a stored reference's object (a path: the file)."""
    store = get_store()
    key = store.key_of(ref)
    if key is not None:
        store.delete(key)
    elif not ref.startswith("s3://"):
        Path(ref).unlink(missing_ok=True)
