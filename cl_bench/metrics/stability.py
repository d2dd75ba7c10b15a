"""Continual-evaluation metrics from the stability-gap curves (curves.csv).

De Lange, van de Ven & Tuytelaars, "Continual evaluation for lifelong learning: identifying
the stability gap" (ICLR 2023). `A(j, t)` is the probe accuracy of task j at evaluation t;
tasks and transitions are numbered from 0. The values depend on `eval.every` and
`eval.probe_size`, which the runner records alongside them.

* min-ACC of task j: the lowest A(j, t) while a later task trains; the summary is the mean
  over tasks 0..T-2.
* WC-ACC: the mean of [A(T-1) at the last evaluation] and the min-ACC of every other task.
* WF^w of task j: the largest drop A_m - A_n (m < n) inside a window of w consecutive
  evaluations, over task j's series from its last evaluation during its own training on;
  WP^w: the largest rise A_n - A_m over the evaluations during its own training. Means over
  tasks (0..T-2 for WF, all tasks for WP).
* LCA^beta of task j: the mean of its first beta accuracies while it trains; mean over tasks.
* Transition (task j, switch s >= j), the switch from task s to s+1: `pre` = A(j) at the last
  evaluation of task s; `depth` = pre - min of A(j) during task s+1; `iters_to_min` and
  `iters_to_recover` count iterations from that last evaluation of task s to the minimum and
  to the first evaluation at or after it with A(j) >= 0.95 * pre (NaN: never, within task s+1).
  The gap of task j is its first transition (s = j), as in the design notes.
* Anytime accuracy (online continual learning, e.g. Koh et al., ICLR 2022's A_AUC, with
  every evaluation point weighted by its rows): the mean of A(j, t) over every evaluation t
  and every task j seen by then, i.e. the mean of curves.csv's accuracy column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

WINDOWS = (10, 100)
LCA_BETA = 10
RECOVER_FRACTION = 0.95


def curve_matrix(rows: Iterable[dict], column: str):
    """(steps, train_task, A): one entry per evaluation; A[t, j] is NaN before task j is seen."""
    rows = list(rows)
    steps = sorted({int(r["step"]) for r in rows})
    index = {s: i for i, s in enumerate(steps)}
    n_tasks = 1 + max(int(r["eval_task"]) for r in rows)
    acc = np.full((len(steps), n_tasks), np.nan)
    train_task = np.zeros(len(steps), dtype=int)
    for r in rows:
        i = index[int(r["step"])]
        acc[i, int(r["eval_task"])] = float(r[column])
        train_task[i] = int(r["train_task"])
    return np.array(steps), train_task, acc


def largest_change(series: np.ndarray, w: int, rise: bool) -> float:
    """Largest drop (or rise) between two evaluations at most w - 1 apart (0 if none)."""
    series = np.asarray(series, dtype=float)
    best = 0.0
    for d in range(1, min(w, len(series))):
        change = series[d:] - series[:-d] if rise else series[:-d] - series[d:]
        best = max(best, float(change.max()))
    return best


def min_acc(train_task: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Per task: lowest accuracy while a later task trains (NaN for the last task)."""
    out = np.full(acc.shape[1], np.nan)
    for j in range(acc.shape[1]):
        later = train_task > j
        if later.any():
            out[j] = np.nanmin(acc[later, j])
    return out


def transitions(steps, train_task, acc, recover: float = RECOVER_FRACTION) -> list[dict]:
    """One dict per (eval_task j, switch s >= j) whose both sides were evaluated."""
    out = []
    for s in range(int(train_task.max())):
        before, during = np.flatnonzero(train_task == s), np.flatnonzero(train_task == s + 1)
        if not len(before) or not len(during):
            continue
        p = before[-1]
        for j in range(s + 1):
            pre, series = acc[p, j], acc[during, j]
            low = int(np.argmin(series))
            back = np.flatnonzero(series[low:] >= recover * pre)
            out.append({
                "eval_task": j, "switch": s, "step": int(steps[p]), "pre": float(pre),
                "minimum": float(series[low]), "depth": float(pre - series[low]),
                "min_step": int(steps[during[low]]),
                "iters_to_min": int(steps[during[low]] - steps[p]),
                "iters_to_recover": (float(steps[during[low + back[0]]] - steps[p])
                                     if len(back) else math.nan),
            })
    return out


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def scenario_metrics(rows: Sequence[dict], scenario: str, windows=WINDOWS,
                     beta: int = LCA_BETA) -> dict:
    """Every continual-evaluation metric of one scenario, named `<metric>_<scenario>`."""
    steps, train_task, acc = curve_matrix(rows, f"acc_{scenario}")
    n = acc.shape[1]
    old = range(n - 1)
    mins = min_acc(train_task, acc)
    last = int(train_task[-1])
    wc = [acc[-1, last]] + [mins[j] for j in range(n) if j != last and not math.isnan(mins[j])]
    m = {"min_acc": _mean(mins[:-1]), "wc_acc": float(np.mean(wc)),
         "anytime_acc": float(np.nanmean(acc))}
    own = [np.flatnonzero(train_task == j) for j in range(n)]
    for w in windows:
        m[f"wf{w}"] = _mean([largest_change(acc[own[j][-1]:, j], w, rise=False)
                             for j in old if len(own[j])])
        m[f"wp{w}"] = _mean([largest_change(acc[own[j], j], w, rise=True)
                             for j in range(n) if len(own[j])])
    m[f"lca{beta}"] = _mean([float(acc[own[j][:beta], j].mean()) for j in range(n) if len(own[j])])
    first = {t["eval_task"]: t for t in transitions(steps, train_task, acc)
             if t["switch"] == t["eval_task"]}
    for key in ("depth", "iters_to_min", "iters_to_recover"):
        m[f"gap_{key}"] = _mean([first[j][key] for j in first])
    m["gap_recovered"] = _mean([float(not math.isnan(first[j]["iters_to_recover"]))
                                for j in first])
    for j in old:
        m[f"min_acc_t{j}"] = float(mins[j])
        if j in first:
            for key in ("depth", "iters_to_min", "iters_to_recover"):
                m[f"gap_{key}_t{j}"] = first[j][key]
    return {f"{k}_{scenario}": v for k, v in m.items()}


def stability_metrics(rows: Sequence[dict], scenarios: Iterable[str], **kw) -> dict:
    """`scenario_metrics` for every scenario; empty when there are no curve rows."""
    if not rows:
        return {}
    out: dict = {}
    for s in scenarios:
        out.update(scenario_metrics(rows, s, **kw))
    return out
