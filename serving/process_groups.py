"""Stopping the process groups the platform starts (TorchServe, and the local stack's API
and worker, each in a session of its own): SIGTERM to every group at once, one wait for
all of them, then SIGKILL for what is left. A group whose leader died (kill -9) is
stopped too: its members are found in /proc. A group's leader leads its session too, and
the processes of that session that made groups of their own (Ray's workers do) go with
it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, or of the session it leads,
    from /proc."""
    return [pid for pid, _ in _members(pgid)]


def _members(pgid: int | None) -> list[tuple[int, int]]:
    """(pid, its group) of each live process in group or session `pgid`."""
    if not pgid:
        return []
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state, ppid, pgrp, session, ...
        if pgid in (int(fields[2]), int(fields[3])) and fields[0] != "Z":
            members.append((int(stat.parent.name), int(fields[2])))
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
    """To the group, and to each process of its session in another group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    for pid, group in _members(pgid):
        if group != pgid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
