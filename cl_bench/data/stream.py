"""The task stream: the one object a benchmark hands to the runner."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Task:
    """One task: uint8 images (N, C, H, W) and int64 labels, train and test split."""

    id: int
    classes: list[int]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> Task:
        return Task(
            self.id,
            self.classes,
            *(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)),
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
