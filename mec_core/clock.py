"""Where a training step's time goes: data, forward (with the loss), backward, optimizer.

On a CPU the marks are wall-clock readings (the ops run synchronously); on a GPU they are
CUDA events recorded on the stream, so marking costs no synchronisation and the times are
read when the metrics are flushed, which synchronises anyway. The first `warmup` steps of a
process (kernel selection, oneDNN primitive and cuDNN plan creation, allocator growth)
are kept apart, so that throughput figures are the steady state's.
"""

from __future__ import annotations

import time

import torch

PHASES = ("data", "forward", "backward", "optimizer")
WARMUP_STEPS = 2


class StepClock:
    """`start()`, then `mark()` at the end of each of PHASES, per step."""

    def __init__(self, device: torch.device, warmup: int = WARMUP_STEPS) -> None:
        self.cuda = device.type == "cuda"
        self.warmup = warmup
        self.marks: list = []
        self.pending: list[list] = []  # the marks of steps past the warm-up, not yet read
        self.warm: list[list] = []  # the warm-up steps' marks
        self.seconds, self.steps = 0.0, 0  # steps past the warm-up, read so far

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self.marks = [self._now()]

    def mark(self) -> None:
        self.marks.append(self._now())
        if len(self.marks) == len(PHASES) + 1:
            (self.warm if len(self.warm) < self.warmup else self.pending).append(self.marks)
            self.marks = []

    def _durations(self, marks: list) -> list[float]:
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]

    def window(self) -> tuple[int, dict[str, float]]:
        """The steps past the warm-up since the last call, and their mean seconds per
        phase (empty when there are none)."""
        steps = [self._durations(m) for m in self.pending]
        self.pending = []
        if not steps:
            return 0, {}
        self.steps += len(steps)
        self.seconds += sum(map(sum, steps))
        return len(steps), {p: sum(s[i] for s in steps) / len(steps)
                            for i, p in enumerate(PHASES)}

    def seconds_per_step(self) -> float:
        """Mean seconds of the steps read so far past the warm-up; of the warm-up steps
        when the run was too short to have any."""
        if self.steps:
            return self.seconds / self.steps
        warm = [sum(self._durations(m)) for m in self.warm]
        return sum(warm) / len(warm) if warm else 0.0
