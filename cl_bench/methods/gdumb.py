"""GDumb: greedy class-balanced sampler, retrain from scratch on the memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.methods.base import Method, MethodConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "gdumb")
@dataclass
class GDumbConf(MethodConf):
    epochs: int = 30  # epochs of retraining from scratch on the memory before each evaluation
    batch_size: int = 32


@defaults_from(GDumbConf)
class GDumb(Method):
    """GDumb (Prabhu et al., ECCV 2020, "GDumb: A Simple Approach that Questions Our
    Progress in Continual Learning"): the stream only fills a class-balanced memory
    (`memory=class_balanced`); before each evaluation (at the end of every task) the model
    is re-initialised and trained from scratch on the memory alone for `epochs` epochs of
    `batch_size` (these steps count as training FLOPs)."""

    memory_needs = frozenset({"add"})
    memory_hint = "choose memory=class_balanced (GDumb's sampler)"
    needs = frozenset({"fixed_steps"})  # it trains at the task's end, not in its steps
    provides = Method.provides - {"step_logits"}  # its stream steps run no forward

    def __init__(self, epochs: int, batch_size: int, **kw):
        super().__init__(**kw)
        self.epochs = epochs
        self.batch_size = batch_size
        self.retraining = False

    def loss(self, batch):
        return super().loss(batch) if self.retraining else {}  # the stream only fills memory

    def after_step(self, batch):
        if not self.retraining:
            self.memory.add(batch)

    def after_task(self, task):
        for module in self.model.modules():
            if module is not self.model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.reset_optimizer()
        held = self.memory.stored()
        self.retraining = True
        try:
            for _ in range(self.epochs):
                order = torch.randperm(len(held), device=held.y.device)
                for idx in order.split(self.batch_size):
                    self.observe(held[idx])
        finally:
            self.retraining = False
