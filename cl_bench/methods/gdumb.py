"""GDumb: greedy class-balanced sampler, retrain from scratch on the memory."""

from __future__ import annotations

import torch

from cl_bench.methods.base import Method


class GDumb(Method):
    """GDumb (Prabhu et al., ECCV 2020, "GDumb: A Simple Approach that Questions Our
    Progress in Continual Learning"): the stream only fills a class-balanced memory
    (`memory=class_balanced`); before each evaluation (at the end of every task) the model
    is re-initialised and trained from scratch on the memory alone for `epochs` epochs of
    `batch_size` (these steps count as training FLOPs)."""

    needs_memory = True

    def __init__(self, epochs: int = 30, batch_size: int = 32, **kw):
        self.make_optimizer = kw["optimizer"]
        super().__init__(**kw)
        self.epochs = epochs
        self.batch_size = batch_size

    def observe(self, x, y, task_ids):
        self.memory.add(x, y, task_ids)
        return {"loss": torch.zeros((), device=y.device)}

    def after_task(self, task):
        for module in self.model.modules():
            if module is not self.model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.optimizer = self.make_optimizer(self.model.parameters())
        n = len(self.memory)
        x, y, t = self.memory.x[:n], self.memory.y[:n], self.memory.task[:n]
        for _ in range(self.epochs):
            order = torch.randperm(n, device=y.device)
            for idx in order.split(self.batch_size):
                super().observe(x[idx], y[idx], t[idx])
