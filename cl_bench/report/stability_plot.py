"""Stability-gap figure: old-task accuracy against iteration, from a run's curves.csv.

`plot_stability_gap` draws one run (or one method of an overlay) on a matplotlib axes;
`write_stability_plot` writes `stability_gap.png` into a run directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cl_bench.metrics.stability import curve_matrix, transitions  # noqa: E402

SCENARIO_NAMES = {"class_il": "class-IL", "task_il": "task-IL", "domain_il": "domain-IL"}


def scenarios_in(curves: pd.DataFrame) -> list[str]:
    """The scenarios whose accuracy column holds values."""
    return [s for s in SCENARIO_NAMES if f"acc_{s}" in curves and curves[f"acc_{s}"].notna().any()]


def plot_stability_gap(curves: pd.DataFrame, ax=None, label: str | None = None,
                       scenario: str | None = None, eval_task: int = 0, color=None,
                       boundaries: bool = True, annotate: bool = True):
    """Accuracy of `eval_task` against iteration, task boundaries as dashed lines, and for
    each switch the minimum (dot, with the gap depth in points) and the recovery to 95% of
    the pre-switch accuracy (cross). Call once per method on the same `ax` to overlay."""
    ax = ax if ax is not None else plt.gca()
    scenario = scenario or scenarios_in(curves)[0]
    column = f"acc_{scenario}"
    steps, train_task, acc = curve_matrix(curves.to_dict("records"), column)
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
    run_dir = Path(run_dir)
    curves = pd.read_csv(run_dir / "curves.csv")
    scenarios = scenarios_in(curves)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 3.8),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        plot_stability_gap(curves, ax=ax, scenario=scenario, eval_task=eval_task)
        ax.set_title(f"{SCENARIO_NAMES[scenario]}: task {eval_task + 1} during later tasks "
                     "(o minimum, x recovered to 95%)", fontsize=8)
    fig.tight_layout()
    path = run_dir / "stability_gap.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
