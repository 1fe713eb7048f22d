"""Freed memory stays in the training process: a step's large tensors are reused, not
zero-filled by the kernel again at every step (page faults counted by the kernel)."""

import os
import subprocess
import sys

import pytest

from mec_core.allocator import keep_freed_memory

CHURN = """
import resource, torch
from mec_core.allocator import keep_freed_memory
print(keep_freed_memory())
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
                          torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.randn(64, 3, 64, 64)  # activations of 64 MiB, as resnet18's at batch 256, 32 px
for step in range(4):  # the first step is the warm-up: the heap grows to its peak
    if step == 1:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x).square().mean().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: str) -> tuple[str, int]:
    env = os.environ | {"MEC_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_allocator__reused_blocks_cause_no_page_faults():
    kept, faults_kept = _faults("1")
    default, faults_default = _faults("0")
    assert (kept, default) == ("True", "False")
    assert faults_default > 3 * 3 * 16_384  # 64 MiB blocks faulted in again (4 KiB pages)
    assert faults_kept < faults_default / 10


def test_allocator__the_environment_can_say_no(monkeypatch):
    monkeypatch.setenv("MEC_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
