"""Datasets as resources of a project: versions made from uploaded image archives, kept in
the store, named by `dataset://NAME[/VERSION]` in a job's `data_dir`, and unpacked where
a worker trains on them.

An upload is checked whole before anything is kept: every member must be a decodable
image at a plain relative path (no '..', no absolute path, no link or device, no duplicate,
no zip bomb); a bad archive is refused with its bad members listed. A good one becomes an
image-folder (train/CLASS/…, test/CLASS/…: the archive's own split when it has one, else
a seeded held-out fraction per class), stored as one tar and described by a version row
(digest, counts per class and split, image sizes, thumbnails)."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import shutil
import tarfile
import uuid
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from mec_core.data import IMAGE_SUFFIXES
from mec_platform import storage
from mec_platform.settings import get_settings
from mec_platform.tables import Dataset, DatasetVersion

SCHEME = "dataset://"
MAX_MEMBERS = 2_000_000
MAX_RATIO = 100  # a zip member this many times larger than its compressed bytes: a bomb
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "test"}
THUMBNAILS, THUMB_SIDE = 8, 64


class ArchiveRefused(ValueError):
    """The archive cannot become a dataset version; `bad` lists its bad members."""

    def __init__(self, message: str, bad: list[str] | None = None) -> None:
        shown = "; ".join((bad or [])[:20]) + (f"; and {len(bad) - 20} more"
                                               if bad and len(bad) > 20 else "")
        super().__init__(f"{message}{': ' + shown if shown else ''}")
        self.bad = bad or []


@dataclass
class Unpacked:
    """An archive's images by (split or None, class or None, name) -> local file."""

    files: dict[tuple[str | None, str | None, str], Path] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)


# --- uploads ---------------------------------------------------------------------------

def unpack(archive: Path, into: Path, max_bytes: int) -> Unpacked:
    """Check and extract every member of a .tar, .tar.gz or .zip archive into `into`
    (flat, renamed), keeping where each came from; ArchiveRefused lists what is wrong."""
    extracted, bad = _extract(archive, into, max_bytes)
    top = _common_top(name for name, _ in extracted)
    out, seen = Unpacked(), set()
    for name, target in extracted:
        place = _place(PurePosixPath(name).parts[1 if top else 0:])
        if place is None:
            bad.append(f"{name}: too deep (CLASS/IMAGE, or train|test|val/CLASS/IMAGE)")
        elif place in seen:
            bad.append(f"{name}: a second member of the same name")
        elif (size := _image_size(target)) is None:
            bad.append(f"{name}: not a readable image")
        else:
            seen.add(place)
            out.files[place], out.sizes[size] = target, out.sizes[size] + 1
    if bad:
        raise ArchiveRefused("the archive has bad members, nothing was kept", bad)
    if not out.files:
        raise ArchiveRefused("the archive holds no images")
    return out


def _extract(archive: Path, into: Path, max_bytes: int) -> tuple[list, list[str]]:
    """One pass over the archive: each regular member with an image's suffix written to
    `into` as (its name, its file); the bad members found on the way (names that leave
    the archive, links and special files, other files, zip bombs); refused whole when its
    members are too many or add up to more than `max_bytes` unpacked."""
    extracted: list[tuple[str, Path]] = []
    bad: list[str] = []
    total = 0

    def take(name: str, size: int, regular: bool, stream_of) -> None:
        nonlocal total
        total += size
        if total > max_bytes:
            raise ArchiveRefused(f"its members add up to more than {max_bytes} bytes unpacked "
                                 "(MEC_MAX_DATASET_MB, times 4)")
        if len(extracted) + len(bad) >= MAX_MEMBERS:
            raise ArchiveRefused(f"more than {MAX_MEMBERS} members")
        if problem := _bad_name(name):
            bad.append(f"{name}: {problem}")
        elif not regular:
            bad.append(f"{name}: a link or special file")
        elif PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            bad.append(f"{name}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            target = into / f"{len(extracted)}{PurePosixPath(name).suffix.lower()}"
            with stream_of() as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            extracted.append((name, target))

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                kind = (info.external_attr >> 16) & 0o170000
                if info.file_size > 1 << 20 and \
                        info.file_size > MAX_RATIO * max(info.compress_size, 1):
                    bad.append(f"{info.filename}: expands more than {MAX_RATIO} times "
                               "(a zip bomb?)")
                    continue
                take(info.filename, info.file_size, kind in (0, 0o100000),
                     lambda info=info: z.open(info))
        return extracted, bad
    try:
        with tarfile.open(archive, "r|*") as tar:  # a stream: one pass, gzip or not
            for info in tar:
                if not info.isdir():
                    take(info.name, max(info.size, 0), info.isfile(),
                         lambda info=info: tar.extractfile(info))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveRefused(f"not a whole .tar, .tar.gz or .zip archive ({exc})") from None
    return extracted, bad


def _bad_name(name: str) -> str | None:
    if "\0" in name or "\\" in name:
        return "a NUL byte or a backslash in its name"
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return "its path leaves the archive"
    return None


def _common_top(names) -> bool:
    """Whether every member lies in one top folder that is not a split's (stripped)."""
    tops = {PurePosixPath(n).parts[0] for n in names if len(PurePosixPath(n).parts) > 1}
    flat = any(len(PurePosixPath(n).parts) == 1 for n in names)
    return len(tops) == 1 and not flat and next(iter(tops)) not in SPLIT_FOLDERS


def _place(parts: tuple[str, ...]) -> tuple[str | None, str | None, str] | None:
    if len(parts) == 1:
        return None, None, parts[0]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    if len(parts) == 3 and parts[0] in SPLIT_FOLDERS:
        return SPLIT_FOLDERS[parts[0]], parts[1], parts[2]
    return None


def _image_size(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
            return f"{image.width}x{image.height}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def image_folder(found: Unpacked, test_fraction: float, seed: int, out: Path) -> dict:
    """Write `found` as one tar of train/CLASS/… and test/CLASS/… (every class folder in
    both, so that labels agree; images with no class go to class 'unlabelled'); returns the
    version's description."""
    given = any(split for split, _, _ in found.files)
    if given and any(split is None for split, _, _ in found.files):
        raise ArchiveRefused("some images are under train/, test/ or val/ and some are not")
    by_class: dict[str, list] = {}
    for place in sorted(found.files, key=lambda p: (p[1] or "", p[2], p[0] or "")):
        by_class.setdefault(place[1] or "unlabelled", []).append(place)
    rng = random.Random(seed)
    counts, thumbnails = {}, []
    with tarfile.open(out, "w") as tar:
        for cls, places in sorted(by_class.items()):
            if given:
                splits = [place[0] for place in places]
            else:
                rng.shuffle(places)
                held = max(1, round(len(places) * test_fraction)) \
                    if len(places) > 1 and test_fraction > 0 else 0
                splits = ["test" if i < held else "train" for i in range(len(places))]
            for split in ("train", "test"):
                folder = tarfile.TarInfo(f"{split}/{cls}")
                folder.type, folder.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(folder)
            counts[cls] = {"train": splits.count("train"), "test": splits.count("test")}
            for i, (place, split) in enumerate(zip(places, splits)):
                source = found.files[place]
                tar.add(source, arcname=f"{split}/{cls}/{i}{source.suffix}")
                if split == "train" and len(thumbnails) < THUMBNAILS and \
                        not any(t["class"] == cls for t in thumbnails):
                    thumbnails.append({"class": cls, "png": _thumbnail(source)})
    return {"images": len(found.files), "classes": counts,
            "sizes": dict(found.sizes.most_common(10)), "thumbnails": thumbnails,
            "split": {"given": True} if given else {"test_fraction": test_fraction,
                                                     "seed": seed}}


def _thumbnail(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def add_version(session: Session, dataset: Dataset, archive: Path, digest: str,
                source: str, test_fraction: float, seed: int) -> DatasetVersion:
    """Check, arrange and store an uploaded archive as the dataset's next version (the
    latest one, unchanged, when it has the same digest and split: an upload sent again).
    Nothing is kept of an archive that is refused."""
    latest = latest_version(session, dataset)
    split = {"test_fraction": test_fraction, "seed": seed}
    if latest is not None and latest.digest == digest and latest.split in (split,
                                                                            {"given": True}):
        return latest
    settings = get_settings()
    work = archive.parent / f"unpack-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        found = unpack(archive, work, 4 * settings.max_dataset_mb << 20)
        arranged = work / "image-folder.tar"
        described = image_folder(found, test_fraction, seed, arranged)
        number = (latest.number if latest else 0) + 1
        key = f"datasets/{dataset.id}/{number}/{digest[:16]}.tar"
        storage.get_store().put(key, arranged)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = DatasetVersion(dataset_id=dataset.id, number=number, key=key, digest=digest,
                             source=source, **described)
    session.add(version)
    return version


def latest_version(session: Session, dataset: Dataset) -> DatasetVersion | None:
    return session.scalar(select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset.id).order_by(DatasetVersion.number.desc()))


def digest_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- dataset:// URIs --------------------------------------------------------------------

def parse(uri: str) -> tuple[str, int | None]:
    """(name, version or None for the latest) of `dataset://NAME[/VERSION]`."""
    name, _, version = uri.removeprefix(SCHEME).partition("/")
    if not name or (version and not version.isdigit()):
        raise ValueError(f"{uri!r} is not dataset://NAME or dataset://NAME/VERSION")
    return name, int(version) if version else None


def resolve(session: Session, project: str, uri: str, field: str) -> str:
    """The exact version `uri` names in `project` (the latest when it names none), as
    dataset://NAME/VERSION; LookupError (a 404 for the API) naming `field` when there is
    none, ValueError when `uri` is malformed."""
    try:
        name, number = parse(uri)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    found = _version(session, project, name, number)
    if found is None:
        what = f"dataset {name!r}" + (f" has no version {number}" if number else
                                      " has no version" if _dataset(session, project, name)
                                      else " not found")
        raise LookupError(f"{field}: {what}")
    return f"{SCHEME}{name}/{found.number}"


def _dataset(session: Session, project: str, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.project == project,
                                                Dataset.name == name))


def _version(session: Session, project: str, name: str, number: int | None
             ) -> DatasetVersion | None:
    dataset = _dataset(session, project, name)
    if dataset is None:
        return None
    if number is None:
        return latest_version(session, dataset)
    return session.scalar(select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset.id, DatasetVersion.number == number))


def local_folder(session: Session, project: str, uri: str) -> Path:
    """The image folder of a dataset version on this host: unpacked once into the cache
    (keyed by the stored object's digest), then shared by every job here."""
    name, number = parse(uri)
    version = _version(session, project, name, number)
    if version is None:
        raise LookupError(f"{uri}: no such dataset version in project {project!r}")
    settings = get_settings()
    store = storage.get_store()
    entry = storage.cache_entry(store, version.key, settings.cache_dir)
    folder = entry / "image-folder"
    if not folder.is_dir():
        archive = storage.fetch(store, version.key, settings.cache_dir, settings.cache_mb << 20)
        partial = entry / f".image-folder-{uuid.uuid4().hex}"
        with tarfile.open(archive, "r") as tar:
            tar.extractall(partial, filter="data")
        partial.rename(folder)
        if archive.is_relative_to(settings.cache_dir):
            archive.unlink()  # the unpacked folder is what is read
    storage.touch(entry, settings.cache_dir, settings.cache_mb << 20)
    return folder


def local_dir(session: Session, project: str, data_dir: str | None) -> str | None:
    """A job's data_dir as a path on this host: a dataset:// version's unpacked folder;
    anything else unchanged."""
    if not (data_dir or "").startswith(SCHEME):
        return data_dir
    return str(local_folder(session, project, data_dir))


