"""Where each dataset's files are, and what of them is missing, checked from their names
alone (nothing is read; no torch): the trainer's loaders, the API at submission and a
worker at claim time ask the same questions and say the same thing."""

from __future__ import annotations

import difflib
from pathlib import Path

from mec_core.config import BUILT_IN, DATASETS

DEFAULT_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
IDX_PREFIX = {"train": "train", "test": "t10k"}
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
SPLIT_FOLDERS = {"train": ["train"], "test": ["val", "test"]}


def reads_no_directory(name: str) -> str:
    """Why a data_dir given with a built-in dataset is refused: it would be ignored."""
    return (f"dataset {name!r} reads no directory ({BUILT_IN[name]}): leave data_dir out, "
            "or name the dataset that the directory holds")


def missing(name: str, data_dir: str | None, splits: tuple[str, ...] = ("train",)) -> str | None:
    """What `load_dataset(name, split, data_dir)` would not find for these splits, said for
    a user (a mistyped directory gets its nearest existing sibling), from the file names
    alone (nothing is read); None when everything is there or the dataset needs no files.
    A directory given with a built-in dataset is refused too: it would be ignored."""
    if name in BUILT_IN:
        return reads_no_directory(name) if data_dir is not None else None
    if name not in DATASETS:
        return None
    root = data_dir or DEFAULT_DIRS.get(name)
    if root is None:
        return f"dataset {name!r} needs a data directory (data_dir)"
    path = Path(root)
    if not path.is_dir():
        return no_directory(name, path, data_dir is None)
    if name == "fashion-mnist":
        files = [f"{p}-{kind}" for split in splits for p in [IDX_PREFIX[split]]
                 for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        absent = [f for f in files if not (path / f).is_file()
                  and not (path / f"{f}.gz").is_file()]
        return f"fashion-mnist: {path} has no {', '.join(absent)} (IDX files, or .gz)" \
            if absent else None
    if name == "cifar10":
        batches = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() \
            else path
        files = [f for split in splits for f in CIFAR_BATCHES[split]]
        absent = [f for f in files if not (batches / f).is_file()]
        return f"cifar10: {batches} has no {', '.join(absent)} (python-pickle batches)" \
            if absent else None
    for split in splits:  # imagefolder: class sub-folders under each split's folder
        subs = [path / s for s in SPLIT_FOLDERS[split] if (path / s).is_dir()]
        if not subs and split == "test":
            return f"imagefolder: {path} has no val/ or test/ folder of classes"
        folder = subs[0] if subs else path
        if not any(p.is_dir() for p in folder.iterdir()):
            return f"imagefolder: {folder} has no class sub-folders"
    return None


def no_directory(name: str, path: Path, default: bool) -> str:
    """'no such directory', with the existing directory whose name is nearest."""
    said = f"{name}: no such directory {path}"
    if default and name == "fashion-mnist":
        return f"{said} (install it with: apt-get install dataset-fashion-mnist, or give " \
               "data_dir)"
    parent = next((p for p in path.parents if p.is_dir()), None)
    if parent is None:
        return said
    wanted = path.relative_to(parent).parts[0]
    siblings = sorted(p.name for p in parent.iterdir() if p.is_dir())
    near = difflib.get_close_matches(wanted, siblings, n=1, cutoff=0.5)
    if near:
        return f"{said}; did you mean {parent / near[0]}?"
    return f"{said}; {parent} has {', '.join(siblings[:8]) or 'no sub-directories'}" + \
        (", …" if len(siblings) > 8 else "")
