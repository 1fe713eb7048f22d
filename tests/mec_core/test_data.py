"""Datasets by name, and the errors for missing or malformed ones."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from mec_core.data import DatasetError, load_dataset, synthetic


def test_digits__bundled_split_is_fixed_and_disjoint():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255
    assert torch.equal(load_dataset("digits", "train").labels, train.labels)


def test_built_in__a_directory_given_is_refused_not_ignored(tmp_path):
    for name in ("digits", "synthetic"):
        with pytest.raises(DatasetError, match=f"dataset '{name}' reads no directory"):
            load_dataset(name, "train", str(tmp_path))


def test_synthetic__deterministic_and_class_structured():
    a, b = synthetic("train", n=64), synthetic("train", n=64)
    assert torch.equal(a.images, b.images)
    assert a.images.shape == (64, 3, 32, 32) and len(a.classes) == 10


def _write_idx(path, magic, array, gz=True):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def test_fashion_mnist__reads_idx_files_plain_or_gzipped(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, images, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, np.arange(5), gz=True)
    ds = load_dataset("fashion-mnist", "test", str(tmp_path))
    assert ds.images.shape == (5, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]


def test_fashion_mnist__missing_or_malformed_files_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=f"no such directory {tmp_path}/nowhere"):
        load_dataset("fashion-mnist", "train", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", "train", str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DatasetError, match="not an IDX file with magic number 2051"):
        load_dataset("fashion-mnist", "train", str(tmp_path))
    _write_idx(tmp_path / "train-images-idx3-ubyte", 2051, np.zeros((3, 28, 28)), gz=False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-10])  # truncated
    with pytest.raises(DatasetError, match="header says"):
        load_dataset("fashion-mnist", "train", str(tmp_path))


def test_cifar10__reads_pickle_batches_and_refuses_code(tmp_path):
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 255, (4, 3072)).astype(np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    ds = load_dataset("cifar10", "test", str(tmp_path))
    assert ds.images.shape == (4, 3, 32, 32) and ds.labels.tolist() == [0, 1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))  # not print: an imported Ray may replace it

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing to load posix.system"):
        load_dataset("cifar10", "test", str(tmp_path))
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", "train", str(tmp_path))


def test_imagefolder__class_folders_resized_and_cropped(tmp_path):
    for split in ("train", "val"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), colour).save(folder / "a.png")
            Image.new("RGB", (30, 50), colour).save(folder / "b.jpg")
            (folder / "notes.txt").write_text("not an image")
    train = load_dataset("imagefolder", "train", str(tmp_path), image_size=16)
    test = load_dataset("imagefolder", "test", str(tmp_path), image_size=16)
    assert train.classes == ("cat", "dog") and train.images.shape == (4, 3, 16, 16)
    assert train.labels.tolist() == [0, 0, 1, 1] and len(test) == 4
    assert int(train.images[0, 0].float().mean()) > 240  # red stays red

    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="cannot decode .*broken.png"):
        load_dataset("imagefolder", "train", str(tmp_path), image_size=16)


def test_imagefolder__needs_a_directory_and_classes(tmp_path):
    with pytest.raises(DatasetError, match="needs a data directory"):
        load_dataset("imagefolder", "train")
    with pytest.raises(DatasetError, match="has no class sub-folders"):
        load_dataset("imagefolder", "train", str(tmp_path))
    with pytest.raises(DatasetError, match="no val/ or test/ folder"):
        load_dataset("imagefolder", "test", str(tmp_path))


def test_load_dataset__unknown_name_and_split():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", "train", "/tmp")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("digits", "validation")



def test_load_dataset__a_mistyped_directory_gets_its_nearest_sibling(tmp_path):
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(DatasetError, match="did you mean .*/cifar10\\?"):
        load_dataset("cifar10", "train", str(tmp_path / "cifar-10"))
