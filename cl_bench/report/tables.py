"""Group runs by what varies between them and aggregate metrics over seeds."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

IDENTITY = ["benchmark", "method", "memory", "memory_size", "model", "scenario"]
# columns that never define a group: the seed (aggregated over), bookkeeping, paths
NOT_GROUPS = ("seed", "run_id", "git_commit", "run_dir", "status", "error", "device",
              "data.", "logger.", "output_root", "skip_done", "resumed_after_task",
              "torch_version", "torchvision_version", "hydra_version", "clbench_version",
              "python_version", "host", "cpu_model", "cpu_cores", "gpu_model", "gpu_driver",
              "cuda_version")
METRIC_PREFIXES = ("acc_", "forgetting_", "bwt_", "min_acc_", "wc_acc_")
COST_COLUMNS = ["train_flops", "wall_seconds", "memory_bytes", "peak_rss_bytes"]


def group_keys(runs: pd.DataFrame) -> list[str]:
    """The config columns that vary between runs, each kept only if it splits the runs
    further than the ones before it (so `method._target_` does not repeat `method`)."""
    candidates = IDENTITY + [c for c in runs.columns if "." in c]
    keys: list[str] = []
    groups = 1
    for col in candidates:
        if col not in runs or col.startswith(NOT_GROUPS) or col in keys:
            continue
        n = runs.groupby(keys + [col], dropna=False).ngroups
        if n > groups:
            keys.append(col)
            groups = n
    return keys or ["method"]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    metrics = [c for c in runs.columns if c.startswith(METRIC_PREFIXES)
               and pd.api.types.is_numeric_dtype(runs[c]) and runs[c].notna().any()]
    return metrics + [c for c in COST_COLUMNS if c in runs]


def ci95(values: pd.Series) -> float:
    n = values.count()
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def aggregate(runs: pd.DataFrame, keys: list[str],
              metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean, sample std and 95% CI half-width (Student t) per group of `metrics` (default:
    every metric and cost column)."""
    metrics = metric_columns(runs) if metrics is None else metrics
    out = []
    for values, group in runs.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row["n"] = len(group)
        row["seeds"] = " ".join(str(s) for s in sorted(group["seed"].tolist()))
        for m in metrics:
            row[f"{m}_mean"] = group[m].mean()
            row[f"{m}_std"] = group[m].std(ddof=1)  # NaN for one run: no spread to show
            row[f"{m}_ci95"] = ci95(group[m])
        out.append(row)
    return pd.DataFrame(out)


def _fmt(value: float, metric: str) -> str:
    if pd.isna(value):
        return "-"
    if metric.endswith(("flops", "bytes")):
        return f"{value:.3g}"
    if metric.endswith("seconds"):
        return f"{value:.1f}"
    return f"{value:.4f}"


CELL = "mean ± std [95% CI]"  # what a cell of `display_table` shows


def display_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Strings 'mean ± std [CI low, CI high]' per metric (the 95% CI only with two or
    more seeds; 'mean (n=1)' for a single run, which has no spread), for printing,
    Markdown and LaTeX."""
    shown = table[keys + ["n"]].copy()
    for col in table.columns:
        if col.endswith("_mean"):
            metric = col[: -len("_mean")]
            cells = []
            for m, s, h in zip(table[col], table[f"{metric}_std"], table[f"{metric}_ci95"],
                               strict=True):
                if pd.isna(s):
                    cells.append(f"{_fmt(m, metric)} (n=1)" if not pd.isna(m) else "-")
                    continue
                ci = "" if pd.isna(h) else f" [{_fmt(m - h, metric)}, {_fmt(m + h, metric)}]"
                cells.append(f"{_fmt(m, metric)} ± {_fmt(s, metric)}{ci}")
            shown[metric] = cells
    return shown


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' writer, through tabulate)."""
    return frame.to_markdown(index=False, tablefmt="github") + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    """A booktabs LaTeX tabular (pandas' writer): text escaped (& % $ # _ { } ~ ^ \\),
    ± as $\\pm$."""
    text = frame.to_latex(index=False, escape=True, column_format="l" * len(frame.columns))
    return text.replace("±", r"$\pm$")
