"""A rich progress bar for the training loop (a Callbacks implementation)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mec_core.train import Callbacks, StepMetrics


class RichProgress(Callbacks):
    """Shows steps, epoch, loss, coding length and ||C||_2 (MEC), the monitor's latest kNN
    top-1 and images/s on stderr."""

    SHOWN = (("loss", "loss {:.4f}"), ("coding_length", "L/m {:.3f}"),
             ("spectral_norm", "||C|| {:.2f}"), ("knn_top1", "kNN {:.1f}%"),
             ("images_per_sec", "{:.0f} img/s"))

    def __init__(self, method: str = "mec") -> None:
        self.method = method.upper()
        self.bar = Progress(TextColumn("[bold]{task.fields[method]}[/] epoch {task.fields[epoch]}"),
                            BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        self.task = None
        self.steps_per_epoch = 1
        self.latest: dict[str, float] = {}

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def on_start(self, start_step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.task = self.bar.add_task("train", total=total_steps, completed=start_step,
                                      epoch=start_step // steps_per_epoch, info="",
                                      method=self.method)

    def on_metrics(self, records: list[StepMetrics]) -> None:
        for r in records:  # the monitor's values come every N steps: keep the latest
            self.latest.update(r.values)
        info = "  ".join(fmt.format(self.latest[k]) for k, fmt in self.SHOWN if k in self.latest)
        self.bar.update(self.task, completed=records[-1].step, epoch=records[-1].epoch,
                        info=info)
