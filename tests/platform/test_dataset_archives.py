"""Uploaded archives: what becomes a dataset version (an image folder with a train/test
split) and what is refused, with its bad members listed and nothing left behind."""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mec_platform.datasets import (
    ArchiveRefused,
    image_folder,
    unpack,
)


def png(seed: int, side: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_of(path: Path, members: dict[str, bytes], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def folder_of(arranged: Path) -> dict[str, list[str]]:
    with tarfile.open(arranged) as tar:
        files = [m.name for m in tar.getmembers() if m.isfile()]
    return {split: sorted(f.split("/")[1] for f in files if f.startswith(split + "/"))
            for split in ("train", "test")}


def test_class_folders_under_one_top_folder_get_a_seeded_split_per_class(tmp_path):
    members = {f"shoes/{cls}/{i}.png": png(i + 100 * c) for c, cls in enumerate("ab")
               for i in range(10)}
    found = unpack(tar_of(tmp_path / "a.tar.gz", members), _dir(tmp_path), 1 << 30)
    described = image_folder(found, 0.2, 7, tmp_path / "out.tar")
    assert described["classes"] == {"a": {"train": 8, "test": 2}, "b": {"train": 8, "test": 2}}
    assert described["images"] == 20 and described["sizes"] == {"12x12": 20}
    assert described["split"] == {"test_fraction": 0.2, "seed": 7}
    assert [t["class"] for t in described["thumbnails"]] == ["a", "b"]
    assert folder_of(tmp_path / "out.tar") == {"train": ["a"] * 8 + ["b"] * 8,
                                               "test": ["a"] * 2 + ["b"] * 2}
    again = image_folder(unpack(tmp_path / "a.tar.gz", _dir(tmp_path), 1 << 30), 0.2, 7,
                         tmp_path / "again.tar")
    assert again["classes"] == described["classes"]  # the same seed: the same split


def test_the_archives_own_split_is_kept_and_images_alone_are_unlabelled(tmp_path):
    given = {"train/cat/1.png": png(1), "train/cat/2.png": png(2), "val/cat/3.png": png(3)}
    found = unpack(tar_of(tmp_path / "g.tar", given, gz=False), _dir(tmp_path), 1 << 30)
    described = image_folder(found, 0.5, 0, tmp_path / "g-out.tar")
    assert described["classes"] == {"cat": {"train": 2, "test": 1}}
    assert described["split"] == {"given": True}
    zipped = tmp_path / "flat.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for i in range(4):
            z.writestr(f"{i}.png", png(i))
    flat = image_folder(unpack(zipped, _dir(tmp_path), 1 << 30), 0.25, 0, tmp_path / "f.tar")
    assert flat["classes"] == {"unlabelled": {"train": 3, "test": 1}}
    one = {f"cat/{i}.png": png(i) for i in range(4)}  # one class folder: a class, kept
    found = unpack(tar_of(tmp_path / "one.tar", one, gz=False), _dir(tmp_path), 1 << 30)
    assert image_folder(found, 0.25, 0, tmp_path / "one-out.tar")["classes"] == {
        "cat": {"train": 3, "test": 1}}


@pytest.mark.parametrize("name, why", [
    ("../escape.png", "leaves the archive"), ("/etc/cron.png", "leaves the archive"),
    ("a/notes.txt", "not an image file"), ("a/broken.png", "not a readable image"),
    ("a/b/c/deep.png", "too deep")])
def test_a_bad_member_refuses_the_archive_naming_it(tmp_path, name, why):
    members = {"a/1.png": png(1), name: b"not a png" if "broken" in name or name.endswith(
        ".txt") else png(2)}
    into = _dir(tmp_path)
    with pytest.raises(ArchiveRefused, match=why) as refused:
        unpack(tar_of(tmp_path / "bad.tar.gz", members), into, 1 << 30)
    assert refused.value.bad == [f"{name}: {refused.value.bad[0].split(': ', 1)[1]}"]


def test_links_duplicates_and_zip_bombs_are_bad_members(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("a/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name in ("a/1.png", "./a/1.png"):
            info = tarfile.TarInfo(name)
            data = png(1)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveRefused) as refused:
        unpack(path, _dir(tmp_path), 1 << 30)
    assert any("a link or special file" in b for b in refused.value.bad)
    assert any("a second member of the same name" in b for b in refused.value.bad)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/zeros.png", b"\0" * (64 << 20))
    with pytest.raises(ArchiveRefused, match="zip bomb"):
        unpack(bomb, _dir(tmp_path), 1 << 40)


def claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width × height pixels."""
    data = bytearray(png(0, side=1))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's checksum
    return bytes(data)


def test_images_of_too_many_pixels_are_bad_members_whatever_their_bytes(tmp_path):
    """Decoded, each would take gigabytes in a worker; PIL refuses the largest itself."""
    members = {"a/1.png": png(1), "a/wide.png": claiming(8000, 7000),
               "a/bomb.png": claiming(30000, 30000)}
    with pytest.raises(ArchiveRefused) as refused:
        unpack(tar_of(tmp_path / "pixels.tar.gz", members), _dir(tmp_path), 1 << 30)
    assert sorted(refused.value.bad) == [
        "a/bomb.png: more pixels than PIL opens, over the limit of 50,000,000 per image",
        "a/wide.png: 8000x7000 pixels, over the limit of 50,000,000 per image"]


def test_an_archive_too_large_unpacked_or_not_an_archive_is_refused(tmp_path):
    members = {f"a/{i}.png": png(i) for i in range(3)}
    with pytest.raises(ArchiveRefused, match="bytes unpacked"):
        unpack(tar_of(tmp_path / "big.tar.gz", members), _dir(tmp_path), 100)
    (tmp_path / "junk").write_bytes(b"\x89PNG but not an archive" * 100)
    with pytest.raises(ArchiveRefused, match="not a whole .tar"):
        unpack(tmp_path / "junk", _dir(tmp_path), 1 << 30)
    with pytest.raises(ArchiveRefused, match="holds no images"):
        unpack(tar_of(tmp_path / "empty.tar", {}, gz=False), _dir(tmp_path), 1 << 30)


def _dir(tmp_path: Path) -> Path:
    folder = tmp_path / f"unpacked-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    return folder
