"""Progressive Learning without Forgetting: distillation from every previous task's model,
with credit assignment between the new-task and the distillation gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.plugins.lwf import check_distill_args, distill_weight, kd_loss
from cl_bench.schemas import defaults_from, schema


def project_conflict(g_new: list[torch.Tensor], g_old: list[torch.Tensor]):
    """PCGrad-style projection of the flattened gradient `g_new` against `g_old`: when
    g_new . g_old < 0, g_new - (g_new . g_old / |g_old|^2) g_old, otherwise g_new as it is.
    Returns (projected g_new, cosine of g_new and g_old before projection, dot) without a
    host sync (the choice is a multiplication by a clamped coefficient)."""
    dot = sum((a * b).sum() for a, b in zip(g_new, g_old, strict=True))
    sq_old = sum(b.pow(2).sum() for b in g_old)
    sq_new = sum(a.pow(2).sum() for a in g_new)
    coef = dot.clamp(max=0) / sq_old.clamp(min=torch.finfo(sq_old.dtype).tiny)
    cos = dot / (sq_new * sq_old).sqrt().clamp(min=torch.finfo(dot.dtype).tiny)
    return [a - coef * b for a, b in zip(g_new, g_old, strict=True)], cos, dot


@schema("plugin", "plwf")
@dataclass
class PLwFConf(PluginConf):
    _target_: str = "cl_bench.plugins.plwf.PLwF"
    temperature: float = 2.0
    alpha: float | None = None  # weight of the distillation; null: as lwf (t - 1 / 1)
    t2_scaling: bool = False  # multiply the distillation by T^2 (Hinton et al.)
    credit_assignment: bool = True  # project g_new off g_old when they conflict


@defaults_from(PLwFConf)
class PLwF(Plugin):
    """Progressive Learning without Forgetting (Feng, Yuan, Wang, Huang, Bian & Zhang,
    arXiv 2211.15215, 2022). A frozen snapshot of the model is kept at the end of every
    task; on each step the current batch goes through every snapshot, and snapshot i's
    logits on its own task's classes (class-IL and task-IL; all outputs in domain-IL) are
    distilled into the model (`kd_loss`, temperature T; times T^2 with `t2_scaling`),
    averaged over the snapshots and weighted like LwF: w = `alpha`, or with `alpha: null`
    t - 1 on task t in task-IL and domain-IL, 1 in class-IL (the paper's weights are not
    known here; these make PLwF differ from LwF only in its teachers and the projection).

    Credit assignment (`credit_assignment: true`): g_old, the gradient of the distillation
    term, is computed here with `torch.autograd.grad`; the term enters the kernel's sum
    detached, so the kernel's backward leaves in `.grad` exactly g_new, the gradient of
    every other term: the method's loss (for ER, its cross-entropy on the current and the
    replayed samples) and the other plugins' terms, as rewritten by the method's
    `after_backward` (A-GEM) and by the plugins listed before this one. `after_backward`
    then sets grad = g_new' + g_old, with g_new' = g_new minus its component along g_old
    when they conflict (g_new . g_old < 0). Only g_new is projected.
    Logged per step as loss-like columns: `loss_plwf_cos` (cosine of g_new and g_old before
    projection; after it the cosine is max(cos, 0)) and `loss_plwf_conflict` (1 when they
    conflicted, so its mean is the fraction of steps that did).
    FLOPs: snapshot forwards `flops_teacher`; the model's extra pass on the batch, whose
    backward is g_old, `flops_distillation`; the projection's vector arithmetic
    (9 FLOPs per trainable parameter) `flops_credit_assignment`.
    """

    needs = frozenset({"class_logits"})

    stability_knobs = ("alpha",)

    def __init__(self, temperature: float, alpha: float | None,
                 t2_scaling: bool, credit_assignment: bool):
        check_distill_args("plwf", temperature, alpha)
        self.temperature, self.alpha, self.t2_scaling = float(temperature), alpha, t2_scaling
        self.credit_assignment = credit_assignment
        self.snapshots: list[tuple[int, torch.nn.Module]] = []  # (task id, frozen model)
        self.steps = 0  # steps with credit assignment, and how many of them conflicted
        self.conflicts: torch.Tensor | int = 0
        self._pending = None  # (params, g_old, cos slot, conflict slot) between loss and step

    def weight(self) -> float:
        return distill_weight(self.alpha, self.method.scenario, len(self.snapshots))

    def loss(self, batch):
        if not self.snapshots:
            return {}
        m, T = self.method, self.temperature
        with m.flops("distillation"):
            if self.credit_assignment:  # g_old needs a backward of its own: a pass of its own
                x = m.preprocess(batch.x, train=True)
                logits = m.model(x)
            else:
                x, logits = m.forward_of(batch.x)
        terms = []
        for task_id, snapshot in self.snapshots:
            with torch.no_grad(), m.flops("teacher"):
                target = snapshot(x)
            own = m.class_mask[task_id]
            terms.append(kd_loss(logits[:, own], target[:, own], T, self.t2_scaling))
        kd = self.weight() * torch.stack(terms).mean()
        if not self.credit_assignment:
            return {"plwf": kd}
        params = list(m.trainable_parameters())
        grads = torch.autograd.grad(kd, params, allow_unused=True)
        g_old = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(params, grads, strict=True)]
        cos, conflict = torch.zeros((), device=kd.device), torch.zeros((), device=kd.device)
        self._pending = (params, g_old, cos, conflict)
        # the slots are filled in after_backward, before the kernel detaches the terms for
        # logging; they are zero when the kernel sums the terms
        return {"plwf": kd.detach().requires_grad_(), "plwf_cos": cos,
                "plwf_conflict": conflict}

    @torch.no_grad()
    def after_backward(self, batch):
        if self._pending is None:
            return
        params, g_old, cos_slot, conflict_slot = self._pending
        self._pending = None
        g_new = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        projected, cos, dot = project_conflict(g_new, g_old)
        for p, a, b in zip(params, projected, g_old, strict=True):
            p.grad = a + b
        cos_slot.copy_(cos)
        conflict_slot.copy_(dot < 0)
        self.steps += 1
        self.conflicts = self.conflicts + conflict_slot
        self.method.counter.add(9 * sum(p.numel() for p in params), "credit_assignment")

    def conflict_fraction(self) -> float:
        """Fraction of the credit-assignment steps so far whose gradients conflicted."""
        return float(self.conflicts) / self.steps if self.steps else 0.0

    def after_task(self, task):
        self.snapshots.append((task.id, self.method.frozen_copy(self.method.model).eval()))

    def state_dict(self):
        return {"snapshots": [(t, s.state_dict()) for t, s in self.snapshots],
                "steps": self.steps, "conflicts": int(self.conflicts)}

    def load_state_dict(self, state):
        self.snapshots = []
        for task_id, weights in state["snapshots"]:
            snapshot = self.method.frozen_copy(self.method.model).eval()
            snapshot.load_state_dict(weights)
            self.snapshots.append((task_id, snapshot))
        self.steps, self.conflicts = state["steps"], state["conflicts"]
