"""serving.process_groups: a group is stopped with the processes of its session that made
groups of their own (as Ray's workers do), also once its leader is gone."""

import os
import signal
import subprocess
import sys
import time

from serving.process_groups import group_members, stop_groups

# a leader whose child leaves its group (not its session), both sleeping
CHILD = "import os, time; os.setpgid(0, 0); time.sleep(120)"
LEADER = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {CHILD!r}]); " \
    "time.sleep(120)"


def _start() -> subprocess.Popen:
    leader = subprocess.Popen([sys.executable, "-c", LEADER], start_new_session=True)
    deadline = time.monotonic() + 20
    while not _own_group(leader.pid):
        assert time.monotonic() < deadline, "the child did not leave its group"
        time.sleep(0.05)
    return leader


def _own_group(leader: int) -> list[int]:
    """The members of `leader`'s session in other groups."""
    return [pid for pid in group_members(leader) if os.getpgid(pid) != leader]


def test_stop_groups__stops_session_members_in_groups_of_their_own():
    leader = _start()
    assert stop_groups([leader.pid], timeout=5) == [leader.pid]
    assert group_members(leader.pid) == []
    leader.wait(5)


def test_stop_groups__finds_them_after_a_kill_9_of_the_leader():
    leader = _start()
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait(5)
    assert group_members(leader.pid) == _own_group(leader.pid) != []  # the child alone
    assert stop_groups([leader.pid], timeout=5) == [leader.pid]
    assert group_members(leader.pid) == []
