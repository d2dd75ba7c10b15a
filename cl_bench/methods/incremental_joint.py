"""Incremental joint training: full replay of every earlier task, batch growing with them."""

from __future__ import annotations

import torch

from cl_bench.methods.base import Method


class IncrementalJoint(Method):
    """Incremental joint training, the full-replay reference of the stability-gap papers
    (De Lange et al., ICLR 2023; van de Ven's rotated-MNIST example): on task k each step
    trains on the current batch plus an equally large batch drawn uniformly from each
    earlier task's training set, so the batch is k times the budget's batch size."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._past: list[tuple[torch.Tensor, ...]] = []

    def loss(self, x, y, task_ids):
        parts = [(x, y, task_ids)]
        for px, py, pt in self._past:
            idx = torch.randint(len(py), (len(y),), device=py.device)
            parts.append((px[idx], py[idx], pt[idx]))
        x, y, task_ids = (torch.cat(p) for p in zip(*parts, strict=True))
        return self.cross_entropy(self.forward(x), y, task_ids)

    def after_task(self, task):
        self._past.append(self.train_data(task))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "past": self._past}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._past = list(state["past"])
