"""Console output: a progress bar per task and the final tables (rich)."""

from __future__ import annotations

import logging
import sys

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

log = logging.getLogger("cl_bench")


class ConsoleLogger:
    """Progress bar per task (loss, iterations/s, ETA) and warnings on stderr; the
    end-of-run tables and the run directory on stdout (`clbench > log` keeps them)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(stderr=True, quiet=not enabled)
        self.out = Console(quiet=not enabled)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[speed]} it/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._bar = None

    def start_task(self, task_id: int, n_tasks: int, total_steps: int | None) -> None:
        """A bar for the task; `total_steps` None: unknown ahead (the bar counts up)."""
        if not self.progress.live.is_started:
            self.progress.start()
        self._bar = self.progress.add_task(
            f"task {task_id + 1}/{n_tasks}", total=total_steps, loss=float("nan"), speed="-"
        )

    def advance(self, steps: int, loss: float) -> None:
        task = self.progress.tasks[self._bar]
        speed = f"{task.speed:.0f}" if task.speed else "-"
        self.progress.update(self._bar, advance=steps, loss=loss, speed=speed)

    def end_task(self) -> None:
        task = self.progress.tasks[self._bar]
        self.progress.update(self._bar, total=task.completed)

    def stop(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()

    def say(self, text: str, stdout: bool = False) -> None:
        """One line as it is (on stderr, or stdout): never wrapped (rich wraps at 80
        columns when the stream is not a terminal, which would split a path), no markup."""
        console = self.out if stdout else self.console
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    def warn(self, text: str) -> None:
        """A warning: on stderr even with logger.console=false, and in clbench.log."""
        log.warning(text)
        if self.enabled:
            self.say(f"warning: {text}")
        else:
            sys.stderr.write(f"clbench: warning: {text}\n")

    def report(self, matrices: dict[str, np.ndarray], summary: dict, run_dir) -> None:
        self.stop()
        for scenario, a in matrices.items():
            table = Table(title=f"accuracy matrix ({scenario}): row = after task, col = task")
            table.add_column("after")
            for j in range(a.shape[1]):
                table.add_column(f"T{j + 1}", justify="right")
            for i, row in enumerate(a):
                table.add_row(f"T{i + 1}", *(f"{v:.3f}" for v in row))
            self.out.print(table)
        table = Table(title="final metrics")
        table.add_column("metric")
        for scenario in matrices:
            table.add_column(scenario, justify="right")
        for metric in ("acc", "aia", "forgetting", "bwt", "fwt"):
            table.add_row(metric, *(f"{summary[f'{metric}_{s}']:.4f}" for s in matrices))
        self.out.print(table)
        self.out.print(
            f"train FLOPs {summary['train_flops']:.3e}  eval FLOPs {summary['eval_flops']:.3e}  "
            f"train {summary['train_seconds']:.1f} s  eval {summary['eval_seconds']:.1f} s  "
            f"memory {summary['memory_bytes']} B"
        )
        self.say(f"run dir: {run_dir}", stdout=True)
