"""A failed write names its file (a real ENOSPC: /dev/full refuses every write)."""

import errno
from pathlib import Path

import pytest

from mec_core.writes import naming

FULL = Path("/dev/full")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_naming__a_full_disk_says_which_file():
    with pytest.raises(OSError) as raised, naming(FULL), FULL.open("w") as f:
        f.write("a metrics line\n")
        f.flush()
    assert raised.value.errno == errno.ENOSPC
    assert str(raised.value) == f"[Errno {errno.ENOSPC}] No space left on device (writing {FULL})"


def test_naming__lets_other_errors_and_success_through(tmp_path):
    with naming(tmp_path / "x"):
        (tmp_path / "x").write_text("kept")
    assert (tmp_path / "x").read_text() == "kept"
    with pytest.raises(ValueError), naming(tmp_path / "x"):
        raise ValueError("not a write")
