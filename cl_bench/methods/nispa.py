"""NISPA: neuro-inspired stability-plasticity adaptation of a fixed sparse network."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from cl_bench.methods.base import MethodConf
from cl_bench.methods.isolation import TaskAware, view_layers
from cl_bench.schemas import defaults_from, schema


@schema("method", "nispa")
@dataclass
class NISPAConf(MethodConf):
    # weight density of the static random connectivity (paper: 0.2 MLP, 0.1 conv)
    density: float = 0.2
    phases: int = 5  # phases per task (equal shares of its planned steps); selection between
    k: float = 10.0  # a_t = (1 + cos(t pi / k)) / 2 (paper: k = 30 with 5-epoch phases)
    min_activation: float = 0.05  # no selection once a_t <= this (paper: 5%)
    act_samples: int = 1000  # training inputs of the task for the mean unit activations
    reinit: bool = True  # re-initialise everything but the frozen stable paths after a task
    # layers kept dense (none: the head is sparse too, as the paper)
    dense_layers: list[str] = field(default_factory=list)


def stable_fraction(t: int, k: float) -> float:
    """a_t = (1 + cos(t pi / k)) / 2: the activation share stable units carry at phase t."""
    return 0.5 * (1 + math.cos(t * math.pi / k))


def top_units(act: torch.Tensor, share: float) -> torch.Tensor:
    """The fewest units whose activations sum to at least `share` of the layer's total."""
    order = act.sort(descending=True, stable=True)
    cum = order.values.cumsum(0)
    n = min(len(act), int((cum < share * cum[-1]).sum()) + 1)
    keep = torch.zeros_like(act, dtype=torch.bool)
    keep[order.indices[:n]] = True
    return keep


@defaults_from(NISPAConf)
class NISPA(TaskAware):
    """NISPA (Gurbuz & Dovrolis, ICML 2022, "NISPA: Neuro-Inspired Stability-Plasticity
    Adaptation for Continual Learning in Sparse Networks"). A network of fixed weight
    density `density` (random static connectivity over every layer but `dense_layers`)
    whose units are stable or plastic. Each task's planned steps are split into `phases`
    phases; after phase t (t < phases, while a_t > min_activation) the stable units of
    each hidden layer are the earlier tasks' ones plus the fewest units whose mean ReLU
    activation on `act_samples` of the task's inputs carries a_t of the layer total
    (a_t = (1 + cos(t pi / k)) / 2); the output units of the classes seen so far are
    stable, the inputs always. Connections from plastic into stable units are dropped and
    as many grown at random into plastic units (weights starting at 0), so the total
    density is kept. Connections between stable units (and stable units' biases) of
    earlier tasks are frozen (gradients zeroed); after each task the stable set is fixed,
    and with `reinit` the rest of the weights is re-initialised (Kaiming, fan-out) and
    plastic biases zeroed, as the authors' code. Old classes' logits depend on frozen
    stable paths only, so both task-IL and class-IL (argmax over the classes seen) are
    defined. Deviations: the authors' phases are 5 epochs each and stop (rolling back one
    phase) when validation accuracy drops by a margin or a_t <= 5% (k = 30); here the
    phases are a fixed number of equal shares of the task's budget (choose k near the
    phases to reach small a_t), without validation rollback."""

    supported_scenarios = ("class_il", "task_il")
    # the phases' unit bookkeeping and pruning schedule are outside state_dict: a run
    # resumes from the task's start
    resumes_in_task = False
    predict_needs_task_ids = False
    needs = frozenset({"planned_steps"})

    def __init__(self, density: float, phases: int, k: float,
                 min_activation: float, act_samples: int, reinit: bool,
                 dense_layers: list[str] | tuple, **kw):
        if not 0 < density <= 1:
            raise ValueError(f"method.density={density} must be in (0, 1]")
        if phases < 2:
            raise ValueError(f"method.phases={phases} must be >= 2 (stable units are chosen "
                             "between phases)")
        if k <= 0:
            raise ValueError(f"method.k={k} must be > 0")
        if act_samples < 1:
            raise ValueError(f"method.act_samples={act_samples} must be >= 1")
        self.density, self.phases, self.k = density, phases, k
        self.min_activation, self.act_samples, self.reinit = min_activation, act_samples, reinit
        self.dense_layers = list(dense_layers)
        super().__init__(**kw)
        self.step = self.phase = 0
        self.selected = False  # a selection ran in this task
        self._claimed: list[float] = []  # share of hidden units each task made stable
        self._x: torch.Tensor | None = None

    def wrap_model(self, model):
        self.layers = view_layers(model, self.dense_layers, "method.dense_layers")
        layers = list(self.layers.values())
        self.names = list(self.layers)
        for i in range(1, len(layers)):
            if layers[i].weight.shape[1] % layers[i - 1].weight.shape[0]:
                raise ValueError(f"method=nispa: layer {self.names[i]} does not read the units "
                                 f"of {self.names[i - 1]} (a chain of layers)")
        self.conn, self.frozen = {}, {}
        for n, layer in self.layers.items():
            w = layer.weight
            keep = torch.randperm(w.numel(), device=w.device)[: round(self.density * w.numel())]
            conn = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            conn[keep] = True
            self.conn[n] = conn.view_as(w)
            self.frozen[n] = torch.zeros_like(self.conn[n])
            with torch.no_grad():
                w.mul_(self.conn[n])
            layer.set_view(self.conn[n], self.conn[n])
        # stable units per layer output (the head's: the classes seen so far)
        self.stable = [torch.zeros(layer.weight.shape[0], dtype=torch.bool,
                                   device=layer.weight.device) for layer in layers]
        self.old_stable = [s.clone() for s in self.stable]
        return model

    def _src(self, i: int, stable: list[torch.Tensor]) -> torch.Tensor:
        """Layer i's inputs' stability, expanded to its input dimension (all inputs of
        the first layer are stable)."""
        w = list(self.layers.values())[i].weight
        if i == 0:
            return torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        prev = stable[i - 1]
        return prev.repeat_interleave(w.shape[1] // len(prev))

    def _pair(self, i: int, tgt: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        w = list(self.layers.values())[i].weight
        shape = (-1, *[1] * (w.dim() - 1))
        return (tgt.view(shape) & src.view(1, -1, *shape[2:])).expand_as(w)

    # -- phases ---------------------------------------------------------------------------
    def train_data(self, task):
        data = super().train_data(task)
        gen = torch.Generator().manual_seed(task.id)
        self._x = data.x[torch.randperm(len(data), generator=gen)[: self.act_samples]
                         .to(data.x.device)]
        return data

    def before_task(self, task):
        super().before_task(task)
        self.step, self.phase, self.selected = 0, 0, False
        self.old_stable = [s.clone() for s in self.stable]
        self._set_views()

    def _set_views(self) -> None:
        """Installs the views after `conn` or `frozen` changed, and the gradient masks of
        the weights that train (connected, not frozen) the steps then apply."""
        self._trains = {}
        for n, layer in self.layers.items():
            self._trains[n] = self.conn[n] & ~self.frozen[n]
            layer.set_view(self.conn[n], self._trains[n])

    @torch.no_grad()
    def after_backward(self, batch):
        for i, (n, layer) in enumerate(self.layers.items()):
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(self._trains[n])
            if layer.bias is not None and layer.bias.grad is not None:
                layer.bias.grad.mul_(~self.old_stable[i])

    def after_step(self, batch):
        self.step += 1
        if self.phase < self.phases - 1 and \
                self.step >= round((self.phase + 1) * self.task_steps / self.phases):
            self.phase += 1
            share = stable_fraction(self.phase, self.k)
            if share > self.min_activation:
                self._select_and_rewire(share)

    @torch.no_grad()
    def _activations(self) -> list[torch.Tensor]:
        acts, hooks = {}, []
        for n, layer in self.layers.items():
            def hook(module, inputs, output, n=n):
                a = output.relu()
                acts[n] = a.mean(0) if a.dim() == 2 else a.mean((0, 2, 3))
            hooks.append(layer.register_forward_hook(hook))
        try:
            with self.counter.evaluating():  # statistics for the selection, not training
                self.model(self.preprocess(self._x, train=False))
        finally:
            for h in hooks:
                h.remove()
        return [acts[n] for n in self.names]

    @torch.no_grad()
    def _select_and_rewire(self, share: float) -> None:
        acts = self._activations()
        last = len(self.names) - 1
        stable = [self.old_stable[i] | top_units(a, share) for i, a in enumerate(acts[:last])]
        stable.append(self.seen_mask.clone())
        self.stable, self.selected = stable, True
        for i, (n, layer) in enumerate(self.layers.items()):
            into_stable = self._pair(i, stable[i], ~self._src(i, stable))
            drop = self.conn[n] & into_stable
            n_drop = int(drop.sum())
            self.conn[n] &= ~drop
            layer.weight.masked_fill_(drop, 0.0)
            free = ~self.conn[n] & ~stable[i].view(-1, *[1] * (layer.weight.dim() - 1))
            free_idx = free.flatten().nonzero().squeeze(1)
            grow = free_idx[torch.randperm(len(free_idx), device=free_idx.device)[:n_drop]]
            self.conn[n].view(-1)[grow] = True
            layer.weight.view(-1)[grow] = 0.0
        self._set_views()
        self.reset_optimizer()

    @torch.no_grad()
    def after_task(self, task):
        before = sum(int(s.sum()) for s in self.old_stable[:-1])
        if not self.selected:  # no phase ended early enough: select (untrained after) now
            self._select_and_rewire(stable_fraction(1, self.k))
        self.stable[-1] = self.seen_mask.clone()
        for i, n in enumerate(self.names):
            self.frozen[n] = self.conn[n] & self._pair(i, self.stable[i], self._src(i, self.stable))
        if self.reinit:
            for i, (n, layer) in enumerate(self.layers.items()):
                fresh = torch.empty_like(layer.weight)
                nn.init.kaiming_normal_(fresh, mode="fan_out", nonlinearity="relu")
                keep = self.frozen[n]
                layer.weight.copy_(torch.where(keep, layer.weight, fresh * self.conn[n]))
                if layer.bias is not None:
                    layer.bias.masked_fill_(~self.stable[i], 0.0)
        self.old_stable = [s.clone() for s in self.stable]
        self._set_views()
        units = sum(len(s) for s in self.old_stable[:-1])
        after = sum(int(s.sum()) for s in self.old_stable[:-1])
        self._claimed.append((after - before) / units)

    @torch.no_grad()
    def predict_logits(self, x, task_ids=None):
        logits = self.model(x)
        if task_ids is None:  # class-IL: argmax over the classes seen so far
            logits = logits.masked_fill(~self.seen_mask, float("-inf"))
        return logits

    # -- reporting and state ---------------------------------------------------------------
    def summary(self):
        hidden = self.old_stable[:-1]
        units = sum(len(s) for s in hidden)
        total = self.weight_total()
        return {**super().summary(), "capacity_unit": "units",
                "capacity_per_task": self._claimed, "capacity_used": sum(
                    int(s.sum()) for s in hidden) / units,
                "frozen_weights": sum(int(f.sum()) for f in self.frozen.values()) / total,
                "nispa_density": sum(int(c.sum()) for c in self.conn.values()) / total,
                "mask_bytes": sum(math.ceil(c.numel() / 8) for c in self.conn.values())
                + sum(math.ceil(len(s) / 8) for s in self.stable)}

    def state_dict(self):
        return {**super().state_dict(), "nispa": {
            "conn": self.conn, "frozen": self.frozen, "stable": self.stable,
            "task": self.task, "claimed": self._claimed}}

    def load_state_dict(self, state):
        state = {**state, "optimizer": self.optimizer.state_dict()}  # rebuilt per task
        super().load_state_dict(state)
        s = state["nispa"]
        for n in self.names:
            self.conn[n], self.frozen[n] = s["conn"][n].clone(), s["frozen"][n].clone()
        self.stable = [t.clone() for t in s["stable"]]
        self.old_stable = [t.clone() for t in self.stable]
        self.task, self._claimed = s["task"], list(s["claimed"])
        self._set_views()
