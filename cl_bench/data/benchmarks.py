"""Benchmark builders: a dataset plus a task definition -> TaskStream.

Labels are remapped to the position of their class in the class order, so task t of
a split benchmark owns the contiguous logits [t*k, (t+1)*k).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cl_bench.data.datasets import ArrayDataset, load_dataset
from cl_bench.data.stream import Task, TaskStream
from cl_bench.schemas import Scenario, schema


def split_stream(
    *,
    name: str,
    dataset: str,
    n_tasks: int,
    class_order: list[int] | None = None,
    shuffle_classes: bool = False,
    class_seed: int = 0,
    classes: list[int] | None = None,
    normalize: str = "standard",
    pad: int = 0,
    root: str | Path | None = None,
    download: bool = False,
) -> TaskStream:
    """Split a labelled dataset into `n_tasks` tasks of disjoint classes (class/task-IL).
    `classes`: only these original labels, relabelled 0..len-1 in the given order (e.g.
    CIFAR-100's 0-49 when a backbone was pretrained on 50-99). `normalize`, `pad`: see
    `prepare_inputs`."""
    data = prepare_inputs(load_dataset(dataset, root, download), normalize, pad)
    if classes is not None:
        data = keep_classes(data, list(classes))
    return split_dataset(data, name=name, dataset=dataset, n_tasks=n_tasks,
                         class_order=class_order, shuffle_classes=shuffle_classes,
                         class_seed=class_seed)


NORMALIZE = ("standard", "none")


def prepare_inputs(data: ArrayDataset, normalize: str = "standard", pad: int = 0) -> ArrayDataset:
    """The inputs as a benchmark feeds them. `normalize=standard`: the runner standardises
    pixels with the dataset's mean and std; `none`: it feeds x / 255 in [0, 1], as van de
    Ven & Tolias (2019) do ("no other pre-processing"). `pad`: zero pixels added on every
    side of the uint8 images first (2 turns MNIST into their 32x32 permuted-MNIST input)."""
    if normalize not in NORMALIZE:
        raise ValueError(f"benchmark.normalize={normalize!r}: choose one of {list(NORMALIZE)}")
    if pad < 0:
        raise ValueError(f"benchmark.pad={pad} must be >= 0 (zero pixels on every side)")
    if pad:
        data = replace(data, train_x=F.pad(data.train_x, (pad,) * 4),
                       test_x=F.pad(data.test_x, (pad,) * 4))
    if normalize == "none":
        channels = len(data.info.mean)
        data = replace(data, info=replace(data.info, mean=(0.0,) * channels,
                                          std=(1.0,) * channels))
    return data


def keep_classes(data: ArrayDataset, classes: list[int]) -> ArrayDataset:
    """`data` restricted to the original labels `classes`, relabelled by their position."""
    n = int(data.train_y.max()) + 1
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= n:
        raise ValueError(f"benchmark.classes must be distinct labels in 0..{n - 1}, got "
                         f"{list(classes)}")
    lookup = torch.full((n,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    train_y, test_y = lookup[data.train_y], lookup[data.test_y]
    tr, te = train_y >= 0, test_y >= 0
    return replace(data, train_x=data.train_x[tr], train_y=train_y[tr],
                   test_x=data.test_x[te], test_y=test_y[te])


def check_n_tasks(n_tasks: int, n_classes: int, dataset: str) -> None:
    if n_tasks < 1 or n_classes % n_tasks:
        raise ValueError(
            f"benchmark.n_tasks={n_tasks} must divide the {n_classes} classes of {dataset!r}"
        )


def split_dataset(
    data: ArrayDataset,
    *,
    name: str,
    dataset: str,
    n_tasks: int,
    class_order: list[int] | None = None,
    shuffle_classes: bool = False,
    class_seed: int = 0,
) -> TaskStream:
    """`split_stream` of the loaded `data` (whatever its inputs: images, or features)."""
    n_classes = int(data.train_y.max()) + 1
    check_n_tasks(n_tasks, n_classes, dataset)
    if class_order is None:
        order = torch.arange(n_classes)
        if shuffle_classes:
            order = torch.randperm(n_classes, generator=torch.Generator().manual_seed(class_seed))
    else:
        order = torch.as_tensor(list(class_order))
        if sorted(order.tolist()) != list(range(n_classes)):
            raise ValueError(
                f"benchmark.class_order must be a permutation of 0..{n_classes - 1}, "
                f"got {list(class_order)}"
            )
    rank = torch.empty(n_classes, dtype=torch.int64)
    rank[order] = torch.arange(n_classes)  # original label -> position in the order
    train_y, test_y = rank[data.train_y], rank[data.test_y]
    k = n_classes // n_tasks
    tasks = []
    for t in range(n_tasks):
        tr = (train_y >= t * k) & (train_y < (t + 1) * k)
        te = (test_y >= t * k) & (test_y < (t + 1) * k)
        tasks.append(
            Task(t, list(range(t * k, (t + 1) * k)), data.train_x[tr], train_y[tr],
                 data.test_x[te], test_y[te])
        )
    return TaskStream(
        name=name,
        tasks=tasks,
        n_classes=n_classes,
        input_shape=tuple(data.train_x.shape[1:]),
        scenarios=("class_il", "task_il"),
        mean=data.info.mean,
        std=data.info.std,
        class_order=order.tolist(),
    )


def permuted_stream(
    *,
    name: str,
    dataset: str,
    n_tasks: int,
    permute_first: bool = True,
    permutation_seed: int = 0,
    labels: str = "shared",
    normalize: str = "standard",
    pad: int = 0,
    root: str | Path | None = None,
    download: bool = False,
) -> TaskStream:
    """Each task is the whole dataset under its own fixed pixel permutation. `labels=shared`:
    every task uses the dataset's classes (domain-IL); `per_task`: task t's classes are
    shifted by t x classes, so the stream has n_tasks x classes (the class-IL and task-IL
    permuted MNIST of van de Ven et al., 2019, and of the EBM paper). The permutation acts
    on the padded image (`pad`, as van de Ven & Tolias pad MNIST to 32x32 first)."""
    if labels not in ("shared", "per_task"):
        raise ValueError(f"benchmark.labels={labels!r}: choose 'shared' (domain-IL) or "
                         "'per_task' (class-IL / task-IL)")
    data = prepare_inputs(load_dataset(dataset, root, download), normalize, pad)
    n_classes = int(data.train_y.max()) + 1
    per_task = labels == "per_task"
    shape = tuple(data.train_x.shape[1:])
    n_pixels = data.train_x[0].numel()
    gen = torch.Generator().manual_seed(permutation_seed)
    tasks = []
    for t in range(n_tasks):
        perm = torch.randperm(n_pixels, generator=gen)
        if t == 0 and not permute_first:
            perm = torch.arange(n_pixels)
        shift = t * n_classes if per_task else 0
        tasks.append(
            Task(t, list(range(shift, shift + n_classes)), _permute(data.train_x, perm),
                 data.train_y + shift, _permute(data.test_x, perm), data.test_y + shift)
        )
    total = n_tasks * n_classes if per_task else n_classes
    return TaskStream(
        name=name,
        tasks=tasks,
        n_classes=total,
        input_shape=shape,
        scenarios=("class_il", "task_il") if per_task else ("domain_il",),
        mean=data.info.mean,
        std=data.info.std,
        class_order=list(range(total)),
    )


def _permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:, perm].reshape(x.shape)


@schema("benchmark", "split")
@dataclass
class SplitBenchmarkConf:
    """`split_stream`; `scenario` and `augment` are read by the runner."""
    _target_: str = "cl_bench.data.benchmarks.split_stream"
    name: str = "???"
    dataset: str = "???"
    n_tasks: int = 5
    # explicit order of the original labels, e.g. [1, 0, 3, 2, ...]
    class_order: list[int] | None = None
    shuffle_classes: bool = False  # true: shuffle the class order with class_seed
    class_seed: int = 0
    classes: list[int] | None = None  # only these original labels (relabelled 0..len-1)
    normalize: str = "standard"  # standard: (x/255 - mean) / std | none: x/255 in [0, 1]
    pad: int = 0  # zero pixels added on every side (2: MNIST as 32x32)
    scenario: Scenario = Scenario.class_il
    augment: str = "none"
    val_fraction: float = 0.0  # of each task's training data held out for validation


@schema("benchmark", "permuted")
@dataclass
class PermutedBenchmarkConf:
    _target_: str = "cl_bench.data.benchmarks.permuted_stream"
    name: str = "???"
    dataset: str = "???"
    n_tasks: int = 10
    permute_first: bool = True
    permutation_seed: int = 0
    labels: str = "shared"  # shared: domain-IL | per_task: n_tasks x classes (class-/task-IL)
    normalize: str = "standard"  # standard: (x/255 - mean) / std | none: x/255 in [0, 1]
    pad: int = 0  # zero pixels added on every side, before the permutation (2: 32x32)
    scenario: Scenario = Scenario.domain_il
    augment: str = "none"
    val_fraction: float = 0.0  # of each task's training data held out for validation
