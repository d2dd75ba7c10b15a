"""Stability-gap figure: old-task accuracy against iteration, from a run's curves.csv.

`plot_stability_gap` draws one run (or one method of an overlay) on a matplotlib axes;
`write_stability_plot` writes `stability_gap.png` into a run directory (`eval.plot=true`
at the end of a run, or afterwards: `python -m cl_bench.report.stability_plot RUN_DIR...`).
It reads the CSV without pandas and draws without pyplot: the figure costs a run ~0.5 s.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from cl_bench.metrics.stability import curve_matrix, transitions

SCENARIO_NAMES = {"class_il": "class-IL", "task_il": "task-IL", "domain_il": "domain-IL"}


def _records(curves) -> list[dict]:
    """Rows of `curves` (a DataFrame or dicts), without the empty cells of a CSV."""
    rows = curves.to_dict("records") if hasattr(curves, "to_dict") else curves
    return [{k: v for k, v in r.items() if v == v and v not in ("", None)} for r in rows]


def scenarios_in(curves) -> list[str]:
    """The scenarios whose accuracy column holds values."""
    rows = _records(curves)
    return [s for s in SCENARIO_NAMES if any(f"acc_{s}" in r for r in rows)]


def plot_stability_gap(curves, ax=None, label: str | None = None,
                       scenario: str | None = None, eval_task: int = 0, color=None,
                       boundaries: bool = True, annotate: bool = True):
    """Accuracy of `eval_task` against iteration, task boundaries as dashed lines, and for
    each switch the minimum (dot, with the gap depth in points) and the recovery to 95% of
    the pre-switch accuracy (cross). Call once per method on the same `ax` to overlay."""
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.gca()
    rows = _records(curves)
    scenario = scenario or scenarios_in(rows)[0]
    column = f"acc_{scenario}"
    steps, train_task, acc = curve_matrix([r for r in rows if column in r], column)
    seen = train_task >= eval_task
    (line,) = ax.plot(steps[seen], 100 * acc[seen, eval_task], color=color, lw=1.2,
                      label=label or f"task {eval_task + 1}")
    for t in transitions(steps, train_task, acc):
        if t["eval_task"] != eval_task:
            continue
        if boundaries:
            ax.axvline(t["step"], color="0.6", ls="--", lw=0.8)
        if not annotate:
            continue
        ax.plot(t["min_step"], 100 * t["minimum"], "o", color=line.get_color(), ms=4)
        ax.annotate(f"-{100 * t['depth']:.1f}", (t["min_step"], 100 * t["minimum"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7,
                    color=line.get_color())
        if not math.isnan(t["iters_to_recover"]):
            back = t["step"] + t["iters_to_recover"]
            ax.plot(back, 100 * acc[steps == back, eval_task][0], "x",
                    color=line.get_color(), ms=5)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"accuracy on task {eval_task + 1} (%, {SCENARIO_NAMES[scenario]})")
    return ax


def write_stability_plot(run_dir: str | Path, eval_task: int = 0) -> Path:
    """stability_gap.png in `run_dir`: one panel per scenario of the run's curves.csv."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    with open(run_dir / "curves.csv", newline="") as f:
        curves = _records(csv.DictReader(f))
    scenarios = scenarios_in(curves)
    fig = Figure(figsize=(5.5 * len(scenarios), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(scenarios), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        plot_stability_gap(curves, ax=ax, scenario=scenario, eval_task=eval_task)
        ax.set_title(f"{SCENARIO_NAMES[scenario]}: task {eval_task + 1} during later tasks "
                     "(o minimum, x recovered to 95%)", fontsize=8)
    fig.tight_layout()
    path = run_dir / "stability_gap.png"
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    for folder in sys.argv[1:] or sys.exit("usage: python -m cl_bench.report.stability_plot "
                                           "RUN_DIR..."):
        print(write_stability_plot(folder))
