"""Metrics of an accuracy matrix a[i][j] = accuracy on task j after training task i.

Definitions as in DESIGN.md (Lopez-Paz & Ranzato, 2017; Chaudhry et al., 2018).
Rows cover the tasks trained so far; columns cover every task of the stream.
"""

from __future__ import annotations

import numpy as np


def average_accuracy(a: np.ndarray) -> float:
    """ACC: mean accuracy over all tasks seen, after the last one."""
    t = a.shape[0]
    return float(a[t - 1, :t].mean())


def average_incremental_accuracy(a: np.ndarray) -> float:
    """Mean over i of the mean accuracy on tasks 1..i after task i."""
    return float(np.mean([a[i, : i + 1].mean() for i in range(a.shape[0])]))


def forgetting(a: np.ndarray) -> float:
    """Mean over j < T of the best accuracy on j before the end minus the final one."""
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[j : t - 1, j].max() - a[t - 1, j] for j in range(t - 1)]))


def backward_transfer(a: np.ndarray) -> float:
    """BWT: mean over j < T of a[T][j] - a[j][j]."""
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))


def forward_transfer(a: np.ndarray, random_init: np.ndarray) -> float:
    """FWT: mean over j > 1 of a[j-1][j] minus the accuracy of the initial model on j."""
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[j - 1, j] - random_init[j] for j in range(1, t)]))


def all_metrics(a: np.ndarray, random_init: np.ndarray, scenario: str) -> dict[str, float]:
    return {
        f"acc_{scenario}": average_accuracy(a),
        f"aia_{scenario}": average_incremental_accuracy(a),
        f"forgetting_{scenario}": forgetting(a),
        f"bwt_{scenario}": backward_transfer(a),
        f"fwt_{scenario}": forward_transfer(a, random_init),
    }
