"""CP&S: continual prune-and-select, per-task subnetworks chosen at test time."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cl_bench.methods.base import MethodConf
from cl_bench.methods.isolation import TaskAware, view_layers
from cl_bench.models.masked import pack_bits, unpack_bits
from cl_bench.schemas import defaults_from, schema

SELECT = ("max_output", "entropy")


@schema("method", "cps")
@dataclass
class CPSConf(MethodConf):
    alpha: float = 0.9  # fraction of each unit's input importance its kept connections carry
    iters: int = 1  # pruning iterations per task (authors' default 1)
    retrain: float = 0.3  # share of the task's planned steps spent retraining after pruning
    prune_samples: int = 1000  # training inputs of the task used for the importances
    select: str = "max_output"  # max_output | entropy: the subnetwork chosen per test sample
    # not pruned: the per-task heads
    dense_layers: list[str] = field(default_factory=lambda: ["head"])


def relief_keep(w: torch.Tensor, x_mean: torch.Tensor, live: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """The connections each output unit keeps: the fewest live ones whose importances
    |w_ij| E|x_j| sum to at least `alpha` of the unit's total (NNrelief, as CP&S's code).
    `x_mean` holds E|x_j| broadcastable to `w` (per input feature, or channel)."""
    imp = (w.abs() * x_mean * live).flatten(1)
    order = imp.sort(dim=1, descending=True)
    cum = order.values.cumsum(1)
    n_keep = (cum < alpha * cum[:, -1:]).sum(1, keepdim=True) + 1  # up to the pivot
    keep_sorted = torch.arange(imp.shape[1], device=w.device) < n_keep
    keep = torch.zeros_like(keep_sorted).scatter(1, order.indices, keep_sorted)
    return keep.view_as(w) & live


@defaults_from(CPSConf)
class CPS(TaskAware):
    """Continual Prune-and-Select (Dekhovich et al., Applied Intelligence 2023). Task t
    trains the weights no earlier subnetwork owns, reading the owned ones read-only; after
    `1 - retrain` of its planned steps it is pruned `iters` times, each followed by an
    equal share of the remaining steps of retraining: each unit keeps the fewest incoming
    connections (owned or free) whose importance |w_ij| E|x_j| on `prune_samples` of the
    task's training inputs reaches `alpha` of its total (the NNrelief rule of the authors'
    code; E|x| is taken from one forward before the layers are pruned, conv inputs per
    channel). The kept connections are task t's subnetwork (a bit-packed mask); the free
    ones among them become owned; pruned free weights are zeroed and released.
    Test: with a task id, task j's subnetwork (task-IL); without, every learned subnetwork
    predicts and each sample takes the one that is most confident on its own task's
    classes (`select=max_output`: the largest logit, the authors' max-output rule applied
    per sample instead of per test batch; `select=entropy`: the lowest softmax entropy),
    so class-IL predictions come from the selected task's classes; `task_infer_acc` is
    the fraction of test samples whose task was selected, in the last evaluation.
    Biases train with the first task only (the authors' code prunes them too; we do not)."""

    supported_scenarios = ("class_il", "task_il")
    # the pruning schedule (steps, prunes done, live masks, the rebuilt optimiser) is
    # outside state_dict: a run resumes from the task's start
    resumes_in_task = False
    needs = frozenset({"planned_steps"})

    def __init__(self, alpha: float, iters: int, retrain: float,
                 prune_samples: int, select: str,
                 dense_layers: list[str] | tuple, **kw):
        if not 0 < alpha <= 1:
            raise ValueError(f"method.alpha={alpha} must be in (0, 1] (importance kept)")
        if iters < 0:
            raise ValueError(f"method.iters={iters} must be >= 0 (pruning iterations)")
        if not 0 <= retrain < 1:
            raise ValueError(f"method.retrain={retrain} must be in [0, 1)")
        if prune_samples < 1:
            raise ValueError(f"method.prune_samples={prune_samples} must be >= 1")
        if select not in SELECT:
            raise ValueError(f"method.select={select!r}: choose one of {SELECT}")
        self.alpha, self.iters, self.retrain = alpha, iters, retrain
        self.prune_samples, self.select = prune_samples, select
        self.dense_layers = list(dense_layers)
        super().__init__(**kw)
        self.step = self.n_pruned = 0
        self.masks: list[dict[str, torch.Tensor]] = []  # per task, bit-packed
        self._selected: tuple | None = None
        self._reset_counts()
        self._prune_x: torch.Tensor | None = None

    def wrap_model(self, model):
        self.layers = view_layers(model, self.dense_layers, "method.dense_layers")
        self.owned = {n: torch.zeros_like(layer.weight, dtype=torch.bool)
                      for n, layer in self.layers.items()}
        self.live = {n: torch.ones_like(o) for n, o in self.owned.items()}
        return model

    def view_masks(self, t):
        if t >= len(self.masks):
            return self.live
        return {n: unpack_bits(p, self.layers[n].weight.shape) for n, p in self.masks[t].items()}

    # -- training -------------------------------------------------------------------------
    def train_data(self, task):
        data = super().train_data(task)
        gen = torch.Generator().manual_seed(task.id)
        idx = torch.randperm(len(data), generator=gen)[: self.prune_samples]
        self._prune_x = data.x[idx.to(data.x.device)]
        return data

    def before_task(self, task):
        if task.id > 0:
            for layer in self.layers.values():
                if layer.bias is not None:
                    layer.bias.requires_grad_(False)
        super().before_task(task)
        self.step = self.n_pruned = 0
        self._reset_counts()
        for n, layer in self.layers.items():
            self.live[n] = torch.ones_like(self.owned[n])
            layer.set_view(self.live[n], ~self.owned[n])

    @torch.no_grad()
    def after_backward(self, batch):
        for n, layer in self.layers.items():
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(~self.owned[n])

    def after_step(self, batch):
        self.step += 1
        while self.n_pruned < self.iters and self.step >= self._prune_at(self.n_pruned):
            self._prune()

    def _prune_at(self, k: int) -> int:
        start = (1 - self.retrain) * self.task_steps
        return max(1, round(start + k * self.retrain * self.task_steps / self.iters))

    @torch.no_grad()
    def _prune(self) -> None:
        means, hooks = {}, []
        for n, layer in self.layers.items():
            def hook(module, inputs, output, n=n):
                x = inputs[0].abs()
                means[n] = (x.mean(0) if x.dim() == 2 else
                            x.mean((0, 2, 3)).view(1, -1, 1, 1))
            hooks.append(layer.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            with self.counter.evaluating():  # pruning statistics: not training FLOPs
                self.model(self.preprocess(self._prune_x, train=False))
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        for n, layer in self.layers.items():
            keep = relief_keep(layer.weight, means[n], self.live[n], self.alpha)
            layer.weight.masked_fill_(~keep & ~self.owned[n], 0.0)
            self.live[n] = keep
            layer.set_view(keep, keep & ~self.owned[n])
        self.n_pruned += 1
        self.reset_optimizer()

    def after_task(self, task):
        if self.n_pruned == 0 and self.iters:
            self._prune()
        self.masks.append({n: pack_bits(m) for n, m in self.live.items()})
        for n in self.layers:
            self.owned[n] |= self.live[n]
        self._reset_counts()

    def resume_task(self, task):
        super().resume_task(task)
        self.live = self.view_masks(task.id)

    # -- test -----------------------------------------------------------------------------
    def _reset_counts(self) -> None:
        device = self.class_mask.device
        self._hits, self._seen = torch.zeros((), device=device), torch.zeros((), device=device)

    def _scores(self, logits: torch.Tensor, t: int) -> torch.Tensor:
        own = logits.masked_fill(~self.class_mask[t], float("-inf"))
        if self.select == "max_output":
            return own.max(1).values
        logp = F.log_softmax(own, 1)
        return (logp.exp() * logp.nan_to_num(neginf=0.0)).sum(1)  # minus the entropy

    @torch.no_grad()
    def predict_logits(self, x, task_ids=None):
        n = len(self.masks) if self.task < len(self.masks) else self.task + 1
        if task_ids is not None:
            if self._selected is not None and self._selected[0] is x:
                self._hits += (self._selected[1] == task_ids).sum()
                self._seen += len(task_ids)
            return super().predict_logits(x, task_ids)
        if n == 0:
            return self.model(x)
        logits = torch.stack([self.forward_task(x, t) for t in range(n)])
        scores = torch.stack([self._scores(logits[t], t) for t in range(n)])
        chosen = scores.argmax(0)
        self._selected = (x, chosen)
        rows = torch.arange(len(x), device=x.device)
        return logits[chosen, rows].masked_fill(~self.class_mask[chosen], float("-inf"))

    # -- reporting and state ---------------------------------------------------------------
    def summary(self):
        total = self.weight_total()
        seen = {n: torch.zeros_like(o) for n, o in self.owned.items()}
        per_task = []
        for t in range(len(self.masks)):
            view = self.view_masks(t)
            per_task.append(sum(int((view[n] & ~seen[n]).sum()) for n in view) / total)
            seen = {n: view[n] | seen[n] for n in view}
        out = {**super().summary(), "capacity_unit": "weights",
               "capacity_per_task": per_task, "capacity_used": sum(per_task),
               "mask_bytes": sum(int(p.numel()) for m in self.masks for p in m.values()),
               "subnet_density_per_task": [
                   sum(int(m.sum()) for m in self.view_masks(t).values()) / total
                   for t in range(len(self.masks))]}
        if float(self._seen):
            out["task_infer_acc"] = float(self._hits / self._seen)
        return out

    def state_dict(self):
        return {**super().state_dict(), "cps": {"masks": self.masks, "task": self.task}}

    def load_state_dict(self, state):
        state = {**state, "optimizer": self.optimizer.state_dict()}  # rebuilt per task
        super().load_state_dict(state)
        self.masks = state["cps"]["masks"]
        self.task = state["cps"]["task"]
        for n in self.layers:
            self.owned[n].zero_()
            for t in range(len(self.masks)):
                self.owned[n] |= self.view_masks(t)[n]
