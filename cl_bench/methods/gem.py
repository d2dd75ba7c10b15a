"""Gradient Episodic Memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cl_bench.data.batch import Batch
from cl_bench.methods.base import Method, MethodConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "gem")
@dataclass
class GEMConf(MethodConf):
    # the dual variables' lower bound ("memory_strength" of Lopez-Paz & Ranzato's code: 0.5):
    # above 0 it pushes the step into the past tasks' cone, not only onto its edge
    margin: float = 0.5
    # added to the diagonal of the tasks' Gram matrix (their code: 1e-3)
    eps: float = 1e-3
    # samples of each past task whose gradient a step takes (null: all the memory holds of
    # it, as the paper)
    per_task: int | None = None


def solve_dual(gram: torch.Tensor, dots: torch.Tensor, margin: float,
               sweeps: int = 200, tol: float = 1e-10) -> torch.Tensor:
    """argmin_v 1/2 v'Pv + b'v subject to v >= margin, for P = `gram` (positive definite,
    one row per past task) and b = `dots`, by exact coordinate descent; the problem is
    tasks x tasks, so it is solved on the host in float64."""
    p = gram.detach().double().cpu().numpy()
    b = dots.detach().double().cpu().numpy()
    v = np.full_like(b, margin)
    for _ in range(sweeps):
        change = 0.0
        for i in range(len(b)):
            new = max(margin, v[i] - (p[i] @ v + b[i]) / p[i, i])
            change = max(change, abs(new - v[i]))
            v[i] = new
        if change <= tol:
            break
    return torch.from_numpy(v).to(dots)


@defaults_from(GEMConf)
class GEM(Method):
    """GEM (Lopez-Paz & Ranzato, NeurIPS 2017, "Gradient Episodic Memory for Continual
    Learning"): after the backward pass of the current batch, the gradient g_k of every
    past task's memory is taken; when a step along g would raise one of their losses
    (g . g_k < 0), g is replaced by z = g + G'v, the solution of the dual QP
    min_v 1/2 v'(GG' + eps I)v + (Gg)'v, v >= margin (`solve_dual`). The memory is filled as
    in ER (`memory=reservoir` keeps each task's share equal in expectation; GEM's own keeps
    the last samples of each task)."""

    memory_needs = frozenset({"add"})
    memory_hint = "GEM takes its past tasks' gradients on the memory: use memory=reservoir"

    def __init__(self, margin: float, eps: float, per_task: int | None, **kw):
        super().__init__(**kw)
        if margin < 0 or eps <= 0:
            raise ValueError(f"method.margin must be >= 0 and method.eps > 0, got margin="
                             f"{margin}, eps={eps}")
        if per_task is not None and per_task < 1:
            raise ValueError(f"method.per_task must be >= 1 or null (all), got {per_task}")
        self.margin, self.eps, self.per_task = margin, eps, per_task
        self.current = 0
        self.projected = 0  # steps whose gradient was projected (summary: gem_projected)

    def before_task(self, task):
        self.current = task.id

    def past_tasks(self) -> list[Batch]:
        """The memory's samples of each task before the current one (at most `per_task`)."""
        stored = self.memory.stored()
        groups = []
        for k in range(self.current):
            group = stored[stored.task == k]
            if self.per_task is not None and len(group) > self.per_task:
                group = group[torch.randperm(len(group), device=group.y.device)[:self.per_task]]
            if len(group):
                groups.append(group)
        return groups

    def after_backward(self, batch):
        if not len(self.memory) or self.current == 0:
            return
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        rows = []
        with self.flops("gem_memory"):
            for group in self.past_tasks():
                loss = self.cross_entropy(self.forward(group.x), group.y, group.task)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                       for p, g in zip(params, grads, strict=True)]))
        if not rows:
            return
        g = torch.cat([p.grad.reshape(-1) for p in params])
        G = torch.stack(rows)
        dots = G @ g
        n_tasks, n_params = G.shape
        self.counter.add(2 * n_tasks * n_params, "gem_projection")  # the dot products
        if not bool((dots < 0).any()):  # GEM projects only on a violated constraint
            return
        gram = G @ G.T + self.eps * torch.eye(n_tasks, dtype=G.dtype, device=G.device)
        z = g + solve_dual(gram, dots, self.margin) @ G
        self.counter.add(2 * n_tasks * n_tasks * n_params + 2 * n_tasks * n_params,
                         "gem_projection")
        self.projected += 1
        offset = 0
        for p in params:
            p.grad.copy_(z[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def after_step(self, batch):
        self.memory.add(batch)

    def summary(self) -> dict:
        return {**super().summary(), "gem_projected": self.projected}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "projected": self.projected}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.projected = state["projected"]
