"""A rich progress bar for the training loop (a Callbacks implementation)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mec_core.train import Callbacks, StepMetrics


class RichProgress(Callbacks):
    """Shows steps, epoch, loss, coding length, ||C||_2 and images/s on stderr."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("[bold]MEC[/] epoch {task.fields[epoch]}"), BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        self.task = None
        self.steps_per_epoch = 1

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def on_start(self, start_step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.task = self.bar.add_task("train", total=total_steps, completed=start_step,
                                      epoch=start_step // steps_per_epoch, info="")

    def on_metrics(self, records: list[StepMetrics]) -> None:
        v = records[-1].values
        info = (f"loss {v['loss']:.4f}  L/m {v['coding_length']:.3f}  "
                f"||C|| {v['spectral_norm']:.2f}  {v.get('images_per_sec', 0):.0f} img/s")
        self.bar.update(self.task, completed=records[-1].step, epoch=records[-1].epoch,
                        info=info)
