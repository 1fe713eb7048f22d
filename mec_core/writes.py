"""A failed write names its file: a full disk says which file it stopped, not only
"No space left on device"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError raised inside is raised again, of the same errno, as
    "<reason> (writing <path>)"."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (writing {path})") from exc
