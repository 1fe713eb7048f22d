"""mec_core.datafiles: what a dataset's directory lacks, from file names alone, said so
that a user can fix it (a typo gets the nearest existing directory)."""

from __future__ import annotations

from mec_core.datafiles import missing


def test_missing__names_what_a_split_lacks_without_reading_it(tmp_path):
    assert missing("synthetic", None) is None and missing("digits", None) is None
    # a folder given with a built-in dataset would be ignored: said, not ignored
    assert missing("digits", str(tmp_path)) == (
        "dataset 'digits' reads no directory (scikit-learn bundles it): leave data_dir out, "
        "or name the dataset that the directory holds")
    assert missing("synthetic", str(tmp_path), ("train", "test")).startswith(
        "dataset 'synthetic' reads no directory (it is generated)")
    assert missing("cifar10", None) == "dataset 'cifar10' needs a data directory (data_dir)"
    assert missing("fashion-mnist", str(tmp_path)) == (
        f"fashion-mnist: {tmp_path} has no train-images-idx3-ubyte, train-labels-idx1-ubyte "
        "(IDX files, or .gz)")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    assert missing("fashion-mnist", str(tmp_path)) is None  # names only: nothing is read
    assert "t10k-images-idx3-ubyte" in missing("fashion-mnist", str(tmp_path), ("train", "test"))
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    assert missing("cifar10", str(tmp_path), ("test",)) is None
    assert missing("cifar10", str(tmp_path)) == (
        f"cifar10: {tmp_path}/cifar-10-batches-py has no data_batch_1, data_batch_2, "
        "data_batch_3, data_batch_4, data_batch_5 (python-pickle batches)")
    assert missing("imagefolder", str(tmp_path / "cifar-10-batches-py")) == (
        f"imagefolder: {tmp_path}/cifar-10-batches-py has no class sub-folders")


def test_missing__a_mistyped_directory_gets_its_nearest_sibling(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "cifar10").mkdir()
    assert missing("fashion-mnist", str(tmp_path / "fashion")) == (
        f"fashion-mnist: no such directory {tmp_path}/fashion; did you mean "
        f"{tmp_path}/fashion-mnist?")
    assert missing("imagefolder", str(tmp_path / "photos" / "train")) == (
        f"imagefolder: no such directory {tmp_path}/photos/train; {tmp_path} has cifar10, "
        "fashion-mnist")
