"""Comparison plots: accuracy-matrix heat maps, stability-gap curves with a band over
seeds, and accuracy against training FLOPs with the Pareto front marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cl_bench.report.load import read_acc_matrix, read_curves  # noqa: E402


def label_of(values: tuple, keys: list[str]) -> str:
    return ", ".join(f"{k}={v}" if k not in ("method", "benchmark", "logger.group") else str(v)
                     for k, v in zip(keys, values, strict=True))


def _groups(runs: pd.DataFrame, keys: list[str]):
    for values, group in runs.groupby(keys, dropna=False, sort=True):
        yield label_of(values if isinstance(values, tuple) else (values,), keys), group


def plot_acc_matrices(runs: pd.DataFrame, keys: list[str], path: Path) -> Path:
    groups = list(_groups(runs, keys))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False)
    for ax, (label, group) in zip(axes[0], groups, strict=True):
        mean = np.mean([read_acc_matrix(d).to_numpy() for d in group.run_dir], axis=0)
        ax.imshow(mean, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(mean):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
        ax.set(title=f"{label} (n={len(group)})", xlabel="evaluated task",
               ylabel="after training task")
        ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_stability_curves(runs: pd.DataFrame, keys: list[str], path: Path,
                          eval_task: int = 0) -> Path | None:
    """Accuracy on `eval_task` during training, mean over seeds with a +/- std band."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    plotted = False
    boundaries: set[int] = set()
    for label, group in _groups(runs, keys):
        series = []
        for run_dir in group.run_dir:
            curves = read_curves(run_dir)
            if curves.empty:
                continue
            task = curves[curves.eval_task == eval_task].set_index("step")["accuracy"]
            series.append(task)
            starts = curves.groupby("train_task").step.min()
            boundaries |= set(starts.iloc[1:].tolist())
        if not series:
            continue
        frame = pd.concat(series, axis=1)
        mean, std = frame.mean(axis=1), frame.std(axis=1, ddof=0)
        line = ax.plot(mean.index, mean, label=f"{label} (n={frame.shape[1]})", lw=1.2)[0]
        ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    for b in sorted(boundaries):
        ax.axvline(b, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="iteration", ylabel=f"accuracy on task {eval_task}", ylim=(0, 1.02),
           title="Continual evaluation (dotted: first evaluation of each new task)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_front(flops: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both cost and accuracy, by cost."""
    order = np.lexsort((-acc, flops))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.array(front, dtype=int)


# --flops -> (summary column, x-axis label)
FLOPS_AXES = {
    "theoretical": ("train_flops", "training FLOPs, theoretical (sparse layers at their density)"),
    "executed": ("train_flops_dense", "training FLOPs, executed (dense kernels)"),
}


def with_flops(runs: pd.DataFrame, table: pd.DataFrame, keys: list[str],
               flops: str) -> tuple[pd.DataFrame, str | None]:
    """`table` with the mean and std over seeds of the training FLOPs `flops` names, and a
    note when runs older than `train_flops_dense` count their `train_flops` instead."""
    column = FLOPS_AXES[flops][0]
    if f"{column}_mean" in table:
        return table, None
    values = runs[column] if column in runs else pd.Series(np.nan, index=runs.index)
    missing = int(values.isna().sum())
    note = (f"{missing} of {len(runs)} runs have no {column} (older runs): their train_flops "
            "is plotted") if missing else None
    grouped = runs.assign(**{column: values.fillna(runs["train_flops"])}).groupby(
        keys, dropna=False, sort=True)[column]
    table = table.assign(**{f"{column}_mean": grouped.mean().to_numpy(),
                            f"{column}_std": grouped.std(ddof=1).fillna(0.0).to_numpy()})
    return table, note


def plot_acc_vs_flops(table: pd.DataFrame, keys: list[str], metric: str, path: Path,
                      flops: str = "theoretical") -> Path:
    """One labelled point per group at its mean training FLOPs (`flops`: theoretical
    `train_flops` or executed `train_flops_dense`, log scale) and mean `metric`, with
    error bars of one std over seeds, and the Pareto front."""
    column, axis = FLOPS_AXES[flops]
    x = table[f"{column}_mean"].to_numpy(float)
    acc = table[f"{metric}_mean"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(x, acc, xerr=table[f"{column}_std"].fillna(0.0),
                yerr=table[f"{metric}_std"].fillna(0.0),
                fmt="o", capsize=3)
    for row, xi, y in zip(table.itertuples(index=False), x, acc, strict=True):
        ax.annotate(label_of(tuple(row[: len(keys)]), keys), (xi, y), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = pareto_front(x, acc)
    ax.step(x[front], acc[front], where="post", color="tab:red", lw=1,
            label="Pareto front")
    ax.set(xscale="log", xlabel=axis, ylabel=metric.replace("_", " "))
    ax.set_title(f"{metric} vs training FLOPs ({flops}), mean ± std over seeds", fontsize=9)
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    if x.max() < 100 * x.min():  # within two decades: 1-2-5 ticks, or hardly one is labelled
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
