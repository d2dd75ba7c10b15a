"""The task stream: the one object a benchmark hands to the runner."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Task:
    """One task: uint8 images (N, C, H, W) and int64 labels, train and test split, and a
    validation split held out of the training data (`benchmark.val_fraction`; None
    without one). `train_task` is the task id of each training sample where it differs
    from `id` (blurry streams, `cl_bench.data.modes.blur`); None: all are `id`."""

    id: int
    classes: list[int]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    train_task: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Task:
        return Task(
            self.id,
            self.classes,
            *(t if t is None else t.to(device) for t in (
                self.train_x, self.train_y, self.test_x, self.test_y, self.val_x, self.val_y,
                self.train_task)),
        )


@dataclass
class TaskStream:
    """An ordered list of tasks plus what a model needs to know about them.

    `scenarios` lists the scenarios this stream can be evaluated in: split benchmarks
    (disjoint classes per task) allow both class-IL and task-IL; streams whose tasks
    share labels (permuted MNIST) allow only domain-IL.
    """

    name: str
    tasks: list[Task]
    n_classes: int
    input_shape: tuple[int, int, int]
    scenarios: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_order: list[int] = field(default_factory=list)
    # how the inputs were made, for the run's summary (e.g. the extractor and feature cache
    # of cached-features benchmarks); empty for a dataset read as it is
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def class_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool matrix (n_tasks, n_classes): which logits belong to each task."""
        mask = torch.zeros(len(self.tasks), self.n_classes, dtype=torch.bool, device=device)
        for task in self.tasks:
            mask[task.id, task.classes] = True
        return mask


def carve_validation(stream: TaskStream, fraction: float, seed: int) -> TaskStream:
    """Holds out `fraction` of every task's training samples as its validation split
    (`val_x`, `val_y`), stratified: fraction * n_c samples (rounded) of each class c, drawn
    with `seed`, at least one left for training; the rest stay in `train_x`, `train_y` in
    their order. The test sets are not touched. `fraction=0` returns `stream` itself."""
    if not 0 <= fraction < 1:
        raise ValueError(f"benchmark.val_fraction={fraction} must be in [0, 1): the fraction "
                         f"of each task's training data held out for validation (0 = none)")
    if fraction == 0:
        return stream
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for task in stream.tasks:
        picked = []
        for c in torch.unique(task.train_y).tolist():
            idx = (task.train_y == c).nonzero().squeeze(1)
            n = min(int(fraction * len(idx) + 0.5), len(idx) - 1)
            picked.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
        val = torch.cat(picked).sort().values
        if not len(val):
            raise ValueError(
                f"benchmark.val_fraction={fraction} leaves task {task.id} without validation "
                f"samples ({len(task.train_y)} training samples); raise it")
        keep = torch.ones(len(task.train_y), dtype=torch.bool)
        keep[val] = False
        tasks.append(replace(task, train_x=task.train_x[keep], train_y=task.train_y[keep],
                             val_x=task.train_x[val], val_y=task.train_y[val]))
    return replace(stream, tasks=tasks)


def shared_labels(stream: TaskStream) -> TaskStream:
    """The domain-IL version of a split stream: every task's labels become their position
    within the task (split MNIST's digits 2t, 2t+1 -> 0, 1), so all tasks share one head of
    `k` outputs (van de Ven & Tolias 2019: split MNIST domain-IL, "is it odd or even")."""
    sizes = {len(task.classes) for task in stream.tasks}
    if len(sizes) != 1:
        raise ValueError(f"scenario=domain_il on benchmark={stream.name} needs tasks of equal "
                         f"size to share a head; its tasks have {sorted(sizes)} classes")
    k = sizes.pop()
    tasks = [replace(task, classes=list(range(k)), **{
        f"{part}_y": None if getattr(task, f"{part}_y") is None
        else getattr(task, f"{part}_y") - min(task.classes) for part in ("train", "test", "val")})
        for task in stream.tasks]
    return replace(stream, tasks=tasks, n_classes=k, scenarios=("domain_il",),
                   class_order=list(range(k)))
