"""Stopping the process groups the platform starts (TorchServe, and the local stack's API
and worker, each in a session of its own): SIGTERM to every group at once, one wait for
all of them, then SIGKILL for what is left. A group whose leader died (kill -9) is
stopped too: its members are found in /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, from /proc."""
    if not pgid:
        return []
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def stop_groups(pgids: list[int], timeout: float = 30) -> list[int]:
    """Stop these process groups: SIGTERM, up to `timeout` s for all of them together,
    SIGKILL for what is left (and up to 10 s for it to go). Returns the groups that had
    live processes."""
    alive = [pgid for pgid in pgids if group_members(pgid)]
    for pgid in alive:
        _signal(pgid, signal.SIGTERM)
    _wait_gone(alive, time.monotonic() + timeout)
    for pgid in alive:
        if group_members(pgid):
            _signal(pgid, signal.SIGKILL)
    _wait_gone(alive, time.monotonic() + 10)
    return alive


def _wait_gone(pgids: list[int], deadline: float) -> None:
    while any(group_members(pgid) for pgid in pgids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
