"""Datasets by name, loaded once into uint8 tensors (N, C, H, W) with int64 labels.

Images stay uint8 until the batched augmentation on the training device turns them into
floats (see augment.py), so no loader processes decode or transform per image.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mec_core.config import BUILT_IN, DATASETS, NATIVE_SIZE
from mec_core.datafiles import (
    CIFAR_BATCHES,
    DEFAULT_DIRS,
    IDX_PREFIX,
    SPLIT_FOLDERS,
    no_directory,
    reads_no_directory,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message names the path and what was expected."""


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, C, H, W), int64 labels (N,), and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match "
                             f"{self.images.shape[0]} images")

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int | None) -> ImageSet:
        """The first n items (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return ImageSet(self.images[:n], self.labels[:n], self.classes)


def load_dataset(name: str, split: str = "train", data_dir: str | None = None,
                 image_size: int | None = None) -> ImageSet:
    """Load `split` ('train' or 'test') of the dataset `name`.

    `image_size` matters only for imagefolder, whose images are resized (shorter side)
    and centre-cropped to it when decoded, and for synthetic, drawn at that size.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name in BUILT_IN and data_dir is not None:
        raise DatasetError(reads_no_directory(name))
    if name == "digits":
        return _digits(split)
    if name == "synthetic":
        return synthetic(split, size=image_size or NATIVE_SIZE["synthetic"])
    root = data_dir or DEFAULT_DIRS.get(name)
    if root is None:
        raise DatasetError(f"dataset {name!r} needs a data directory (--data-dir)")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(no_directory(name, path, data_dir is None))
    if name == "fashion-mnist":
        return _fashion_mnist(path, split)
    if name == "cifar10":
        return _cifar10(path, split)
    if name == "imagefolder":
        return _image_folder(path, split, image_size or NATIVE_SIZE["imagefolder"])
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _digits(split: str) -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16): a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255 / 16)).round().astype(np.uint8))
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    idx = order[:cut] if split == "train" else order[cut:]
    return ImageSet(images[idx, None].contiguous(), labels[idx],
                    tuple(str(i) for i in range(10)))


def synthetic(split: str, n: int | None = None, classes: int = 10, size: int = 32) -> ImageSet:
    """Deterministic class-structured colour images for tests: a smooth random template
    per class, shifted and scaled per image, plus noise."""
    n = n or (2048 if split == "train" else 512)
    g = torch.Generator().manual_seed(1234)  # templates shared by both splits
    templates = torch.nn.functional.interpolate(
        torch.rand(classes, 3, 4, 4, generator=g), size=size, mode="bicubic",
        align_corners=False)
    g.manual_seed(1 if split == "train" else 2)
    labels = torch.randint(classes, (n,), generator=g)
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    shift = torch.randint(-3, 4, (n, 2), generator=g)
    x = templates[labels] * gain
    x = torch.stack([torch.roll(img, tuple(s.tolist()), dims=(1, 2))
                     for img, s in zip(x, shift)])
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, tuple(f"class{i}" for i in range(classes)))


def _open_maybe_gz(path: Path) -> bytes:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            data = candidate.read_bytes()
            return gzip.decompress(data) if candidate.suffix == ".gz" else data
    raise DatasetError(f"expected the IDX file {path} (or {path.name}.gz)")


def _idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic, dims; then uint8 data)."""
    data = _open_maybe_gz(path)
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise DatasetError(f"{path}: not an IDX file with magic number {magic}")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def _fashion_mnist(path: Path, split: str) -> ImageSet:
    prefix = IDX_PREFIX[split]
    images = _idx(path / f"{prefix}-images-idx3-ubyte", 2051)
    labels = _idx(path / f"{prefix}-labels-idx1-ubyte", 2049)
    if len(images) != len(labels):
        raise DatasetError(f"{path}: {len(images)} images but {len(labels)} labels")
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
    return ImageSet(torch.from_numpy(images.copy())[:, None],
                    torch.from_numpy(labels.astype(np.int64)), classes)


class _ArraysOnly(pickle.Unpickler):
    """Unpickler for CIFAR batches: numpy arrays and builtins only, so a crafted file
    cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
               "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar10(path: Path, split: str) -> ImageSet:
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    names = CIFAR_BATCHES[split]
    images, labels = [], []
    for name in names:
        file = path / name
        if not file.is_file():
            raise DatasetError(f"cifar10: expected the python-pickle batch {file}")
        try:
            batch = _ArraysOnly(io.BytesIO(file.read_bytes()), encoding="bytes").load()
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
            raise DatasetError(f"cifar10: {file} is not a CIFAR-10 python batch ({exc})") from exc
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
    return ImageSet(torch.from_numpy(np.concatenate(images)),
                    torch.from_numpy(np.concatenate(labels)), classes)


def _image_folder(path: Path, split: str, size: int) -> ImageSet:
    """root/{train,val|test}/<class>/<image>; a root without split folders is all 'train'."""
    from PIL import Image, UnidentifiedImageError

    sub = SPLIT_FOLDERS[split]
    split_dir = next((path / s for s in sub if (path / s).is_dir()), None)
    if split_dir is None:
        if split == "test":
            raise DatasetError(f"imagefolder: {path} has no val/ or test/ folder of classes")
        split_dir = path
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"imagefolder: {split_dir} has no class sub-folders")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted((split_dir / cls).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    images.append(square_crop(img.convert("RGB"), size))
            except (UnidentifiedImageError, OSError) as exc:
                raise DatasetError(f"imagefolder: cannot decode {file} ({exc})") from exc
            labels.append(label)
    if not images:
        raise DatasetError(f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                           f"under {split_dir}")
    return ImageSet(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(labels, dtype=torch.int64), tuple(classes))


def square_crop(img, size: int) -> np.ndarray:
    """Resize a PIL image's shorter side to `size` and centre-crop it to size x size
    (H, W) or (H, W, C) uint8: the geometry of every image the encoder sees outside
    training."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.BILINEAR)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
