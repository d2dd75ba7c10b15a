"""PackNet: iterative pruning packs one task after another into a single network."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from cl_bench.methods.base import MethodConf
from cl_bench.methods.isolation import TaskAware, view_layers
from cl_bench.schemas import defaults_from, schema


@schema("method", "packnet")
@dataclass
class PackNetConf(MethodConf):
    prune: float = 0.75  # fraction of the task's free weights released (by magnitude, per layer)
    retrain: float = 0.3  # share of the task's planned steps spent retraining after pruning
    # not pruned: the per-task heads (rows of each task's classes)
    dense_layers: list[str] = field(default_factory=lambda: ["head"])


@defaults_from(PackNetConf)
class PackNet(TaskAware):
    """PackNet (Mallya & Lazebnik, CVPR 2018, "PackNet: Adding Multiple Tasks to a Single
    Network by Iterative Pruning"). Task t trains the free weights (owner 0) while the
    weights earlier tasks own are used read-only (their gradients zeroed in
    `after_backward`); after `1 - retrain` of the task's planned steps the `prune` fraction
    of the free weights with the smallest magnitude, per layer, is set to zero and
    released; the rest are retrained for the task's remaining steps and become owned by
    t. Task j is evaluated with the weights owned by tasks <= j (task-IL, ids given).
    Per-task heads are the output layer's rows of each task's classes (`dense_layers`,
    not pruned; only the task's own rows receive gradients). Biases, not pruned, train
    with the first task only, as in the paper. The owner ids take ceil(log2(T+1)) bits
    a weight (`mask_bytes`)."""

    supported_scenarios = ("task_il",)
    needs = frozenset({"planned_steps"})
    # the step within the task and whether it has pruned yet are outside state_dict: a
    # run resumes from the task's start
    resumes_in_task = False

    def __init__(self, prune: float, retrain: float,
                 dense_layers: list[str] | tuple, **kw):
        if not 0 < prune < 1:
            raise ValueError(f"method.prune={prune} must be in (0, 1) (fraction of the "
                             "task's free weights released after training)")
        if not 0 <= retrain < 1:
            raise ValueError(f"method.retrain={retrain} must be in [0, 1) (share of the "
                             "task's steps spent retraining after pruning)")
        self.prune, self.retrain, self.dense_layers = prune, retrain, list(dense_layers)
        super().__init__(**kw)
        n_tasks = self.class_mask.shape[0]
        if n_tasks > 254:
            raise ValueError(f"method=packnet stores owner ids in a byte: {n_tasks} tasks "
                             "is more than 254")
        self.bits = max(1, math.ceil(math.log2(n_tasks + 1)))
        self.step, self.pruned = 0, False

    def wrap_model(self, model):
        self.layers = view_layers(model, self.dense_layers, "method.dense_layers")
        self.owner = {name: torch.zeros_like(layer.weight, dtype=torch.uint8)
                      for name, layer in self.layers.items()}  # 0 free, k owned by task k-1
        self.trainable = {name: torch.ones_like(layer.weight, dtype=torch.bool)
                          for name, layer in self.layers.items()}
        return model

    def view_masks(self, t):
        if t >= self.task:  # the current task: what trains now and what it reads
            return {name: self.owner[name].gt(0) | self.trainable[name] for name in self.layers}
        return {name: self.owner[name].gt(0) & self.owner[name].le(t + 1) for name in self.layers}

    def before_task(self, task):
        if task.id > 0:  # biases train with the first task only
            for layer in self.layers.values():
                if layer.bias is not None:
                    layer.bias.requires_grad_(False)
        super().before_task(task)  # a fresh optimiser over what still trains
        self.step, self.pruned = 0, False
        for name, layer in self.layers.items():
            self.trainable[name] = self.owner[name].eq(0)
            layer.set_view(torch.ones_like(layer.mask, dtype=torch.bool), self.trainable[name])

    @torch.no_grad()
    def after_backward(self, batch):
        for name, layer in self.layers.items():
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(self.trainable[name])

    def after_step(self, batch):
        self.step += 1
        if not self.pruned and self.step >= self._prune_at():
            self._prune()

    def _prune_at(self) -> int:
        return max(1, round((1 - self.retrain) * self.task_steps))

    @torch.no_grad()
    def _prune(self) -> None:
        """Releases the `prune` fraction of smallest-magnitude free weights per layer."""
        for name, layer in self.layers.items():
            free = self.owner[name].eq(0)
            k = round(self.prune * int(free.sum()))
            score = layer.weight.abs().masked_fill(~free, math.inf).flatten()
            drop = torch.zeros_like(free).flatten()
            drop[score.topk(k, largest=False).indices] = True
            drop = drop.view_as(free)
            layer.weight.masked_fill_(drop, 0.0)
            self.trainable[name] = free & ~drop
            layer.set_view(self.owner[name].gt(0) | self.trainable[name], self.trainable[name])
        self.pruned = True
        self.reset_optimizer()  # retraining starts from fresh moments

    def after_task(self, task):
        if not self.pruned:
            self._prune()
        for name in self.layers:
            self.owner[name][self.trainable[name]] = task.id + 1
            self.trainable[name].zero_()
        for name, layer in self.layers.items():
            layer.set_view(self.owner[name].gt(0))

    def summary(self):
        total = self.weight_total()
        owners = torch.cat([o.flatten() for o in self.owner.values()])
        counts = torch.bincount(owners.long(), minlength=self.class_mask.shape[0] + 1)
        per_task = (counts[1: self.task + 2].double() / total).tolist()
        return {**super().summary(), "capacity_unit": "weights",
                "capacity_per_task": per_task, "capacity_used": sum(per_task),
                "mask_bytes": math.ceil(total * self.bits / 8)}

    def state_dict(self):
        return {**super().state_dict(), "packnet": {
            "owner": self.owner, "task": self.task}}

    def load_state_dict(self, state):
        state = {**state, "optimizer": self.optimizer.state_dict()}  # rebuilt per task
        super().load_state_dict(state)
        for name, owner in state["packnet"]["owner"].items():
            self.owner[name].copy_(owner)
        self.task = state["packnet"]["task"]
        for name, layer in self.layers.items():
            self.trainable[name].zero_()
            layer.set_view(self.owner[name].gt(0))
