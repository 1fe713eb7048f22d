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
import json
import random
import shutil
import tarfile
import uuid
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mec_core.config import TrainConfig, trained_images
from mec_core.data import IMAGE_SUFFIXES
from mec_platform import storage
from mec_platform.errors import Conflict, Invalid, NotFound
from mec_platform.settings import get_settings
from mec_platform.specs import SweepSpec
from mec_platform.tables import Dataset, DatasetVersion

SCHEME = "dataset://"
MAX_MEMBERS = 2_000_000
MAX_RATIO = 100  # a zip member this many times larger than its compressed bytes: a bomb
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "test"}
MANIFEST = "manifest.json"  # a version read in place: its objects, not their content
THUMBNAILS, THUMB_SIDE = 8, 64
MAX_PIXELS = 50_000_000  # per image: 150 MB as decoded RGB in a worker


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


def unpack(archive: Path, into: Path, max_bytes: int) -> Unpacked:
    """Check and extract every member of a .tar, .tar.gz or .zip archive into `into`
    (flat, renamed), keeping where each came from; ArchiveRefused lists what is wrong."""
    extracted, bad = _extract(archive, into, max_bytes)
    places, bad = _placed([name for name, _ in extracted], bad)
    out = Unpacked()
    for name, target in extracted:
        if name not in places:
            continue
        try:
            size = _image_size(target)
        except ValueError as exc:
            bad.append(f"{name}: {exc}")
        else:
            out.files[places[name]], out.sizes[size] = target, out.sizes[size] + 1
    if bad:
        raise ArchiveRefused("the archive has bad members, nothing was kept", bad)
    if not out.files:
        raise ArchiveRefused("the archive holds no images")
    return out


def _placed(names: list[str], bad: list[str]) -> tuple[dict[str, tuple], list[str]]:
    """Where each image of a layout goes ((split or None, class or None, name), one top
    folder stripped), and the bad names added to `bad`: too deep, or a second of a name."""
    top = _common_top(names)
    places: dict[str, tuple] = {}
    seen = set()
    for name in names:
        place = _place(PurePosixPath(name).parts[1 if top else 0:])
        if place is None:
            bad.append(f"{name}: too deep (CLASS/IMAGE, or train|test|val/CLASS/IMAGE)")
        elif place in seen:
            bad.append(f"{name}: a second member of the same name")
        else:
            seen.add(place)
            places[name] = place
    return places, bad


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
    """Whether every member lies in one top folder that is not a split's and holds folders
    (stripped: the folder the archive was made of); one holding images alone is a class."""
    parts = [PurePosixPath(n).parts for n in names]
    tops = {p[0] for p in parts if len(p) > 1}
    depths = [len(p) for p in parts]
    return len(tops) == 1 and min(depths, default=0) > 1 and max(depths) > 2 and \
        next(iter(tops)) not in SPLIT_FOLDERS


def _place(parts: tuple[str, ...]) -> tuple[str | None, str | None, str] | None:
    if len(parts) == 1:
        return None, None, parts[0]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    if len(parts) == 3 and parts[0] in SPLIT_FOLDERS:
        return SPLIT_FOLDERS[parts[0]], parts[1], parts[2]
    return None


def _image_size(path: Path) -> str:
    """'WIDTHxHEIGHT' of a readable image of at most MAX_PIXELS; ValueError saying why not
    (a few KB of PNG can claim a 30000 × 30000 canvas that a worker would decode whole)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height <= MAX_PIXELS:
                image.verify()
                return f"{width}x{height}"
        too_many = f"{width}x{height} pixels"
    except Image.DecompressionBombError:  # PIL's own ceiling, far above ours
        too_many = "more pixels than PIL opens"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError("not a readable image") from None
    raise ValueError(f"{too_many}, over the limit of {MAX_PIXELS:,} per image")


def assign(places: list[tuple], test_fraction: float, seed: int
           ) -> tuple[list[tuple[tuple, str, str]], dict, dict]:
    """Each image's (place, split, class): the layout's own split when it has train/ and
    test/ folders, else `test_fraction` of each class held out (at least one of a class of
    two or more), drawn with `seed`; images with no class are class 'unlabelled'. Also the
    counts per class and split, and how the split was made."""
    given = any(split for split, _, _ in places)
    if given and any(split is None for split, _, _ in places):
        raise ArchiveRefused("some images are under train/, test/ or val/ and some are not")
    by_class: dict[str, list] = {}
    for place in sorted(places, key=lambda p: (p[1] or "", p[2], p[0] or "")):
        by_class.setdefault(place[1] or "unlabelled", []).append(place)
    rng, out, counts = random.Random(seed), [], {}
    for cls, members in sorted(by_class.items()):
        if given:
            splits = [place[0] for place in members]
        else:
            rng.shuffle(members)
            held = max(1, round(len(members) * test_fraction)) \
                if len(members) > 1 and test_fraction > 0 else 0
            splits = ["test" if i < held else "train" for i in range(len(members))]
        counts[cls] = {"train": splits.count("train"), "test": splits.count("test")}
        out += [(place, split, cls) for place, split in zip(members, splits)]
    return out, counts, {"given": True} if given else {"test_fraction": test_fraction,
                                                         "seed": seed}


def image_folder(found: Unpacked, test_fraction: float, seed: int, out: Path) -> dict:
    """Write `found` as one tar of train/CLASS/… and test/CLASS/… (every class folder in
    both, so that labels agree); returns the version's description."""
    assigned, counts, split = assign(list(found.files), test_fraction, seed)
    thumbnails: list[dict] = []
    with tarfile.open(out, "w") as tar:
        for cls in counts:
            for part in ("train", "test"):
                folder = tarfile.TarInfo(f"{part}/{cls}")
                folder.type, folder.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(folder)
        for i, (place, part, cls) in enumerate(assigned):
            source = found.files[place]
            tar.add(source, arcname=f"{part}/{cls}/{i}{source.suffix}")
            if part == "train" and len(thumbnails) < THUMBNAILS and \
                    not any(t["class"] == cls for t in thumbnails):
                thumbnails.append({"class": cls, "png": _thumbnail(source)})
    return {"images": len(found.files), "classes": counts,
            "sizes": dict(found.sizes.most_common(10)), "thumbnails": thumbnails,
            "split": split}


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
    def write(work: Path, key: str) -> dict:
        found = unpack(archive, work, 4 * get_settings().max_dataset_mb << 20)
        described = image_folder(found, test_fraction, seed, work / "image-folder.tar")
        storage.get_store().put(key, work / "image-folder.tar")
        return described

    return _new_version(session, dataset, digest, source, test_fraction, seed,
                        f"{digest[:16]}.tar", archive.parent, write)


def add_source_version(session: Session, dataset: Dataset, source: str,
                       test_fraction: float, seed: int, workdir: Path) -> DatasetVersion:
    """A version read in place from an S3 prefix of images (the layout of an archive):
    its objects are listed and checked by name (a worker decodes them when it reads them),
    and a manifest of each object's key, ETag, split and class is kept in the store; a
    worker reading the version downloads exactly those contents (If-Match), so a changed
    object fails the job instead of changing the version."""
    origin = storage.open_store(source, get_settings().s3_endpoint_url)
    if not isinstance(origin, storage.S3Store):
        raise ArchiveRefused("source: only s3://bucket/prefix is read in place")
    if _overlaps(origin, storage.get_store()):
        raise ArchiveRefused(f"source: {source} lies within the platform's own store "
                             "(MEC_STORAGE_URL), which holds every project's files")
    objects = dict(origin.listing())
    wrong = {k: _bad_name(k) or "not an image file" for k in objects
             if _bad_name(k) or PurePosixPath(k).suffix.lower() not in IMAGE_SUFFIXES}
    places, bad = _placed([k for k in objects if k not in wrong],
                          [f"{k}: {why}" for k, why in wrong.items()])
    if bad:
        raise ArchiveRefused("the source has bad objects, nothing was kept", bad)
    if not places:
        raise ArchiveRefused(f"source: no images under {source}")
    assigned, counts, split = assign(list(places.values()), test_fraction, seed)
    key_of = {place: key for key, place in places.items()}
    manifest = [{"key": key_of[place], "etag": objects[key_of[place]], "split": part,
                 "class": cls} for place, part, cls in assigned]
    text = json.dumps({"source": source, "objects": manifest}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()

    def write(work: Path, key: str) -> dict:
        (work / "manifest.json").write_text(text)
        thumbnails, sizes = [], Counter()
        for entry in manifest:  # a sample: the first training image of each class
            if entry["split"] == "train" and len(thumbnails) < THUMBNAILS and \
                    not any(t["class"] == entry["class"] for t in thumbnails):
                sample = work / f"sample{PurePosixPath(entry['key']).suffix}"
                origin.get(entry["key"], sample, entry["etag"])
                try:
                    sizes[_image_size(sample)] += 1
                except ValueError:  # the worker refuses it when it reads the data
                    sizes["unreadable"] += 1
                    continue
                thumbnails.append({"class": entry["class"], "png": _thumbnail(sample)})
        storage.get_store().put(key, work / "manifest.json")
        return {"images": len(manifest), "classes": counts, "split": split,
                "sizes": dict(sizes), "thumbnails": thumbnails}

    return _new_version(session, dataset, digest, source, test_fraction, seed,
                        MANIFEST, workdir, write)


def _overlaps(origin: storage.S3Store, store) -> bool:
    """Whether two S3 prefixes share objects (one lies within the other)."""
    if not isinstance(store, storage.S3Store) or origin.bucket != store.bucket:
        return False
    a, b = f"{origin.prefix}/", f"{store.prefix}/"
    return a.startswith(b) or b.startswith(a) or not origin.prefix or not store.prefix


def _new_version(session: Session, dataset: Dataset, digest: str, source: str,
                 test_fraction: float, seed: int, filename: str, workdir: Path,
                 write) -> DatasetVersion:
    """The dataset's next version, `write(work, key)` storing its content at `key` and
    describing it; the latest version instead when it has this digest and split."""
    latest = latest_version(session, dataset)
    if latest is not None and latest.digest == digest and latest.split in (
            {"test_fraction": test_fraction, "seed": seed}, {"given": True}):
        return latest
    number, name = (latest.number if latest else 0) + 1, dataset.name
    folder = f"datasets/{dataset.id}/{number}/{uuid.uuid4().hex[:12]}"  # this upload's own
    work = workdir / f"version-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        described = write(work, f"{folder}/{filename}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = DatasetVersion(dataset_id=dataset.id, number=number, key=f"{folder}/{filename}",
                             digest=digest, source=source, **described)
    session.add(version)
    try:
        session.flush()
    except IntegrityError:  # another upload to this dataset took the number meanwhile
        session.rollback()
        storage.get_store().delete_prefix(folder)
        raise Conflict(f"dataset {name!r}: another upload made version {number} while this "
                       "one was checked; send it again") from None
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
    if not name or (version and not (version.isdigit() and int(version) > 0)):
        raise ValueError(f"{uri!r} is not dataset://NAME or dataset://NAME/VERSION "
                         "(versions count from 1)")
    return name, int(version) if version else None


def resolve(session: Session, project: str, uri: str, field: str) -> DatasetVersion:
    """The exact version `uri` names in `project` (the latest when it names none);
    LookupError (a 404 for the API) naming `field` when there is none, ValueError when `uri`
    is malformed."""
    try:
        name, number = parse(uri)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    found = _version(session, project, name, number)
    if found is None:
        what = f"dataset {name!r}" + (" not found" if _dataset(session, project, name) is None
                                      else f" has no version {number}" if number else
                                      " has no version")
        raise LookupError(f"{field}: {what}")
    return found


def pinned(session: Session, project: str, config: BaseModel) -> BaseModel:
    """A job's config (a TrainConfig, EvaluateSpec or SweepSpec) with its dataset://
    data_dir naming the exact version it will read (the latest, when it names none):
    NotFound naming the field when there is none in `project`; a dataset version is an
    image folder (Invalid for another dataset), and a pretraining job's batch must fit in
    the images it trains on (Invalid naming batch_size)."""
    sweep = isinstance(config, SweepSpec)
    fields = config.base if sweep else config.model_dump()
    field = "config.base.data_dir" if sweep else "config.data_dir"
    uri = fields.get("data_dir")
    if not (uri or "").startswith(SCHEME):
        return config
    if fields.get("dataset", "fashion-mnist" if sweep else None) not in ("imagefolder", None):
        raise Invalid(f"{field}: a dataset:// version is an image folder: set "
                      f"{field.rsplit('.', 1)[0]}.dataset to imagefolder")
    exact, version = pin(session, project, uri, field)
    if isinstance(config, TrainConfig):
        _check_batch(config, version, exact)
    if sweep:
        return config.model_copy(update={"base": config.base | {"data_dir": exact}})
    return config.model_copy(update={"data_dir": exact})


def pin(session: Session, project: str, uri: str, field: str) -> tuple[str, DatasetVersion]:
    """(dataset://NAME/VERSION, the version) that `uri` names in `project`, the latest
    when it names none: resolve()'s refusals as the API's (NotFound, Invalid)."""
    try:
        version = resolve(session, project, uri, field)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return f"{SCHEME}{parse(uri)[0]}/{version.number}", version


def _check_batch(config: TrainConfig, version: DatasetVersion, uri: str) -> None:
    """Invalid naming batch_size when not one step of training fits in the version."""
    split = sum(counts["train"] for counts in version.classes.values())
    trained = trained_images(config, split)
    if config.batch_size > trained:
        raise Invalid(
            f"config.batch_size: {config.batch_size} is more than the {trained} images a run "
            f"trains on in {uri} ({split} in its train split"
            + (", less the online kNN's held-out tenth" if trained < split else "")
            + f"): set batch_size to at most {trained}, or upload more images")


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
    """The image folder of a dataset version on this host: made once in the cache (keyed
    by the stored object's digest) from the version's tar or, for a version read in place,
    from its manifest's objects; then shared by every job here."""
    name, number = parse(uri)
    version = _version(session, project, name, number)
    if version is None:
        raise LookupError(f"{uri}: no such dataset version in project {project!r}")
    settings = get_settings()
    store, bound = storage.get_store(), settings.cache_mb << 20
    entry = storage.cache_entry(store, version.key, settings.cache_dir)
    folder = entry / "image-folder"
    if not folder.is_dir():
        stored = storage.fetch(store, version.key, settings.cache_dir, bound)
        partial = entry / f".image-folder-{uuid.uuid4().hex}"
        if version.key.endswith(MANIFEST):
            _download(json.loads(stored.read_text()), partial)
        else:
            with tarfile.open(stored, "r") as tar:
                tar.extractall(partial, filter="data")
        partial.rename(folder)
        if stored.is_relative_to(settings.cache_dir):
            stored.unlink()  # the folder is what is read
    storage.touch(entry, settings.cache_dir, bound)
    return folder


def _download(manifest: dict, into: Path) -> None:
    """A manifest's objects as train/CLASS/… and test/CLASS/… under `into`, each exactly
    the content listed (StorageError when an object has changed or gone)."""
    origin = storage.open_store(manifest["source"], get_settings().s3_endpoint_url)
    for cls in {entry["class"] for entry in manifest["objects"]}:
        for part in ("train", "test"):
            (into / part / cls).mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(manifest["objects"]):
        suffix = PurePosixPath(entry["key"]).suffix.lower()
        origin.get(entry["key"], into / entry["split"] / entry["class"] / f"{i}{suffix}",
                   entry["etag"])


def local_dir(session: Session, project: str, data_dir: str | None) -> str | None:
    """A job's data_dir as a path on this host: a dataset:// version's unpacked folder;
    anything else unchanged."""
    if not (data_dir or "").startswith(SCHEME):
        return data_dir
    return str(local_folder(session, project, data_dir))


