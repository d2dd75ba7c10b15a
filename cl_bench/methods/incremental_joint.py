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
        self._past: list = []

    def loss(self, batch):
        picks = [past[torch.randint(len(past), (len(batch),), device=past.y.device)]
                 for past in self._past]
        return super().loss(batch.cat(*picks))

    def after_task(self, task):
        self._past.append(self.train_data(task))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "past": self._past}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._past = list(state["past"])
