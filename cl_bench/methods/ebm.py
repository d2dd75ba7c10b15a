"""Energy-based classifier (Li, Du, van de Ven & Mordatch, "Energy-Based Models for
Continual Learning", CoLLAs 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.errors import ConfigError
from cl_bench.methods.base import Method, MethodConf
from cl_bench.models.ebm import EBMMLP
from cl_bench.schemas import schema

NEGATIVES = ("task", "batch")


@schema("method", "ebm")
@dataclass
class EBMConf(MethodConf):
    negatives: str = "task"  # task: the current task's classes | batch: the batch's labels


class EBM(Method):
    """The energy-based classifier of Li et al. (CoLLAs 2022) on a label-conditioned
    energy network (`model=ebm_mlp`, `model(x, labels)` -> energies).

    Each sample's positive label y is paired with one negative y- drawn uniformly from the
    current classes other than y: with `negatives=task` (boundary-aware) the current
    task's classes, with `negatives=batch` (boundary-agnostic, runs in `stream=task_free`)
    the labels present in the batch. The loss is the negative log-likelihood over the pair,
    L = E(x, y) + log(exp(-E(x, y)) + exp(-E(x, y-))), averaged over the batch. Classes
    absent from the candidates get no gradient through their label embedding, which is
    what spares the old classes. A sample with no other candidate class is paired with
    its own label: its loss is then the constant log 2, with zero gradient.
    `predict` gives -E(x, y) for every class (argmin energy), unseen classes at -inf.
    """

    supported_streams = ("task", "online", "task_free", "blurry")

    def __init__(self, negatives: str = "task", **kw):
        if not isinstance(kw["model"], EBMMLP):
            raise ConfigError("method=ebm needs an energy network: model=ebm_mlp, got "
                              f"{type(kw['model']).__name__}")
        super().__init__(**kw)
        if negatives not in NEGATIVES:
            raise ValueError(f"method.negatives={negatives!r}: choose one of {NEGATIVES}")
        self.negatives = negatives
        self.current = torch.zeros_like(self.seen_mask)  # the current task's classes

    def check_stream(self, modes, stream):
        super().check_stream(modes, stream)
        if "task_free" in modes and self.negatives == "task":
            raise ConfigError(f"method=ebm with method.negatives=task needs task boundaries; "
                              f"stream={stream} hides them: use method.negatives=batch")

    def before_task(self, task):
        self.current = self.class_mask[task.id].clone()

    def candidates(self, y: torch.Tensor) -> torch.Tensor:
        """Bool mask over the classes the negatives of batch labels `y` come from."""
        if self.negatives == "task":
            return self.current
        present = torch.zeros_like(self.seen_mask)
        present[y] = True
        return present

    def sample_negatives(self, y: torch.Tensor) -> torch.Tensor:
        """One negative label per sample, uniform over the candidates other than its label
        (its own label where there is no other)."""
        weight = self.candidates(y).float().expand(len(y), -1).clone()
        rows = torch.arange(len(y), device=y.device)
        weight[rows, y] = 0.0
        weight[rows, y] = (weight.sum(1) == 0).float()
        return torch.multinomial(weight, 1).squeeze(1)

    def loss(self, batch):
        inputs = self.preprocess(batch.x, train=True)
        pairs = torch.stack([batch.y, self.sample_negatives(batch.y)], dim=1)
        energy = self.model(inputs, pairs)  # [B, 2]: positive, negative
        nll = energy[:, 0] + torch.logsumexp(-energy, dim=1)
        return {"ebm": nll.mean()}

    def predict(self, x, task_ids=None):
        return (-self.model(x)).masked_fill(~self.seen_mask, float("-inf"))
