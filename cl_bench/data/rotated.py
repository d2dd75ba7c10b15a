"""Rotated MNIST: every task is the whole dataset rotated by its own angle (domain-IL)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cl_bench.data.datasets import load_dataset
from cl_bench.data.stream import Task, TaskStream
from cl_bench.schemas import Scenario, schema


def rotate(x: torch.Tensor, degrees: float, chunk: int = 10_000) -> torch.Tensor:
    """Rotate uint8 images (N, C, H, W) counter-clockwise about their centre (bilinear,
    zero fill), in batched tensor ops; returns uint8."""
    if degrees % 360 == 0:
        return x
    a = -math.radians(degrees)  # affine_grid maps output to input coordinates
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]])
    out = torch.empty_like(x)
    for b in range(0, len(x), chunk):
        part = x[b : b + chunk].float()
        grid = F.affine_grid(theta.expand(len(part), 2, 3), list(part.shape), align_corners=False)
        rotated = F.grid_sample(part, grid, mode="bilinear", align_corners=False)
        out[b : b + chunk] = rotated.round_().clamp_(0, 255).to(torch.uint8)
    return out


def rotated_stream(
    *,
    name: str,
    dataset: str,
    angles: list[float],
    root: str | Path | None = None,
    download: bool = False,
) -> TaskStream:
    """One task per angle of `angles` (degrees), all with the dataset's labels (domain-IL),
    as in the stability-gap example of De Lange et al. (ICLR 2023): 0/80/160 degrees."""
    if not angles:
        raise ValueError("benchmark.angles is empty; give one angle per task, e.g. [0, 80, 160]")
    data = load_dataset(dataset, root, download)
    n_classes = int(data.train_y.max()) + 1
    tasks = [
        Task(t, list(range(n_classes)), rotate(data.train_x, angle), data.train_y,
             rotate(data.test_x, angle), data.test_y)
        for t, angle in enumerate(angles)
    ]
    return TaskStream(
        name=name,
        tasks=tasks,
        n_classes=n_classes,
        input_shape=tuple(data.train_x.shape[1:]),
        scenarios=("domain_il",),
        mean=data.info.mean,
        std=data.info.std,
        class_order=list(range(n_classes)),
    )


@schema("benchmark", "rotated")
@dataclass
class RotatedBenchmarkConf:
    _target_: str = "cl_bench.data.rotated.rotated_stream"
    name: str = "???"
    dataset: str = "???"
    angles: list[float] = field(default_factory=lambda: [0.0, 80.0, 160.0])
    scenario: Scenario = Scenario.domain_il
    augment: str = "none"
    val_fraction: float = 0.0  # of each task's training data held out for validation
