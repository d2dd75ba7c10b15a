"""The sparsity engine: masked layers at a target density, with static, SET, RigL or SparCL
(task-aware) mask updates, for any method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from cl_bench.models.masked import Masked, layer_densities, make_masked, maskable
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema

UPDATES = ("static", "set", "rigl", "sparcl")


@schema("plugin", "sparsity")
@dataclass
class SparsityConf(PluginConf):
    _target_: str = "cl_bench.plugins.sparsity.Sparsity"
    density: float = 0.1  # fraction of weights kept (1 - sparsity), over all masked layers
    distribution: str = "uniform"  # uniform | erk (Erdos-Renyi-Kernel layer densities, RigL)
    erk_power: float = 1.0  # ERK's exponent on (sum of dims / product of dims)
    # fnmatch patterns of module names left dense, e.g. [head, conv1]
    dense_layers: list[str] = field(default_factory=list)
    init: str = "random"  # random | magnitude (keep the largest initial weights, SparCL)
    update: str = "static"  # static | set | rigl | sparcl (task-aware dynamic masking)
    delta_t: int = 100  # steps between mask updates (RigL's Delta T), restarting each task
    delta_frac: float | None = None  # or: that fraction of each task's planned steps
    drop_fraction: float = 0.3  # set/rigl: alpha, cosine-decayed to 0 at t_end
    t_end: float = 0.75  # set/rigl: fraction of each task's steps after which the mask is fixed
    grow_delta: float = 0.01  # sparcl: density swing of the prune/regrow phases
    importance_grad_coef: float = 0.5  # sparcl: lambda in the importance |w| + lambda |g|
    # sparcl: task fractions ending the grow and the prune/regrow phases
    phases: list[float] = field(default_factory=lambda: [0.1, 0.9])


@defaults_from(SparsityConf)
class Sparsity(Plugin):
    """Sparse training at a fixed weight density (`papers/methods_sparse.md` sections 1b, 3b).

    Model surgery masks every `nn.Linear`/`nn.Conv2d` not matching `dense_layers`, at
    per-layer densities `uniform` or `erk`, from a random mask with exactly
    round(d_l n_l) live weights (`init=magnitude`: the largest initial weights, as SparCL).
    Masked gradients are zeroed before each step and the mask re-applied after it. Every
    `delta_t` steps of a task (`delta_frac`: that fraction of the task's planned steps)
    the mask is updated, the schedule restarting at each task:
      `static`: never;
      `set` (Mocanu et al., 2018): drop the k smallest-magnitude live weights, regrow k at
        random among the dead ones;
      `rigl` (Evci et al., ICML 2020): drop as SET, grow the k with the largest dense
        gradient of this step (a dense-gradient step in the FLOP count);
      with k = floor(f_t nnz_l), f_t = drop_fraction/2 (1 + cos(pi t / T_end)), T_end =
      `t_end` x the task's steps, no update after T_end; nnz per layer never changes;
      `sparcl` (Wang et al., NeurIPS 2022, task-aware dynamic masking as in its code):
        keep the top density p of |w| + `importance_grad_coef` |g| (g this step's masked
        gradient), regrow at random to density q: (p, q) = (d, d + grow_delta) before
        `phases[0]` of the task, (d - grow_delta, d) before `phases[1]`, (d, d) after.
    Grown weights start at zero with zero optimiser state. Mask-update work is logged as
    `overhead_flops_mask_update` (not training FLOPs).
    """

    needs = frozenset({"plain_model"})
    nearest = "method=sparcl_er (ER with plugin sparsity)"

    def __init__(self, density: float, distribution: str,
                 erk_power: float, dense_layers: list[str] | tuple,
                 init: str, update: str, delta_t: int,
                 delta_frac: float | None, drop_fraction: float,
                 t_end: float, grow_delta: float,
                 importance_grad_coef: float, phases: list[float] | tuple):
        if update not in UPDATES:
            raise ValueError(f"plugins.sparsity.update={update!r}: choose one of {UPDATES}")
        if init not in ("random", "magnitude"):
            raise ValueError(f"plugins.sparsity.init={init!r}: choose 'random' or 'magnitude'")
        if delta_t < 1:
            raise ValueError(f"plugins.sparsity.delta_t={delta_t} must be >= 1 (steps)")
        for key, value in (("delta_frac", delta_frac), ("drop_fraction", drop_fraction),
                           ("t_end", t_end)):
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"plugins.sparsity.{key}={value} must be in (0, 1]")
        if update == "sparcl" and not (len(phases) == 2 and 0 <= phases[0] <= phases[1] <= 1):
            raise ValueError(f"plugins.sparsity.phases={list(phases)}: two task fractions "
                             "0 <= a <= b <= 1")
        self.density, self.distribution, self.erk_power = density, distribution, erk_power
        self.dense_layers, self.init, self.update = list(dense_layers), init, update
        self.delta_t, self.delta_frac = delta_t, delta_frac
        self.drop_fraction, self.t_end = drop_fraction, t_end
        self.grow_delta, self.grad_coef, self.phases = grow_delta, importance_grad_coef, phases
        if delta_frac is not None or update == "sparcl":  # fractions of the planned steps
            self.needs = self.needs | {"planned_steps"}
        self.layers: dict[str, Masked] = {}
        self.targets: dict[str, float] = {}
        self.step = 0  # steps of the current task
        self._updating = False
        self._grads: dict[str, torch.Tensor] = {}

    def wrap_model(self, model):
        found = maskable(model, self.dense_layers)
        if not found:
            raise ValueError("plugins.sparsity: the model has no nn.Linear/nn.Conv2d layer "
                             f"outside plugins.sparsity.dense_layers={self.dense_layers}")
        densities = layer_densities([tuple(m.weight.shape) for m in found.values()],
                                    self.density, self.distribution, self.erk_power)
        for (name, module), d in zip(found.items(), densities, strict=True):
            layer = make_masked(module)
            self.layers[name], self.targets[name] = layer, d
            n = layer.weight.numel()
            k = round(d * n)
            if self.init == "magnitude":
                keep = layer.weight.detach().abs().flatten().topk(k).indices
            else:
                keep = torch.randperm(n, device=layer.weight.device)[:k]
            mask = torch.zeros(n, dtype=torch.bool, device=layer.weight.device)
            mask[keep] = True
            layer.set_mask(mask.view_as(layer.weight))
        return model

    # -- schedule -------------------------------------------------------------------------
    def _task_steps(self) -> int | None:
        return self.method.ctx.task_steps

    def _planned_steps(self, key: str) -> int:
        steps = self._task_steps()
        if not steps:
            raise ValueError(f"plugins.sparsity.{key} is a fraction of a task's planned steps, "
                             "and this task has none (budget.match): set budget.epochs or "
                             "budget.iters, or use plugins.sparsity.delta_t")
        return steps

    def _interval(self) -> int:
        if self.delta_frac is not None:
            return max(1, round(self.delta_frac * self._planned_steps("delta_frac")))
        return self.delta_t

    def drop_fraction_at(self, t: int) -> float:
        """RigL's cosine-decayed drop fraction at step `t` of the task (0 after T_end)."""
        steps = self._task_steps()
        if not steps:  # no planned length (a FLOP-capped task): a constant fraction
            return self.drop_fraction
        t_end = self.t_end * steps
        if t > t_end:
            return 0.0
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * t / t_end))

    def _is_update(self, step: int) -> bool:
        if self.update == "static":
            return False
        if self.update == "sparcl":
            return step % self._interval() == 0
        return (step + 1) % self._interval() == 0 and self.drop_fraction_at(step + 1) > 0

    def _arm(self) -> None:
        """Decides whether the coming step updates the mask (its FLOPs are counted at its
        forward, so RigL's dense weight gradient must be known before)."""
        self._updating = self._is_update(self.step)
        dense = self._updating and self.update == "rigl"
        for layer in self.layers.values():
            layer.dense_grad = dense

    # -- phases ---------------------------------------------------------------------------
    def before_task(self, task):
        self.step = 0  # armed at the first step, once the runner has set the task's steps
        self._updating = False
        for layer in self.layers.values():
            layer.dense_grad = False

    @torch.no_grad()
    def after_backward(self, batch):
        if self.step == 0:
            self._arm()  # the task's planned steps are known now
        for name, layer in self.layers.items():
            grad = layer.weight.grad
            if grad is None:
                continue
            if self._updating and self.update == "rigl":
                self._grads[name] = grad.clone()
            grad.mul_(layer.mask)
            if self._updating and self.update == "sparcl":
                self._grads[name] = grad.clone()

    @torch.no_grad()
    def after_step(self, batch):
        for layer in self.layers.values():
            layer.apply_mask()
        if self._updating:
            self._update_masks()
            self._grads.clear()
        self.step += 1
        self._arm()

    def _update_masks(self) -> None:
        t = self.step + 1
        optimizer = self.method.optimizer
        for name, layer in self.layers.items():
            w, old = layer.weight, layer.mask.flatten().bool()
            n = w.numel()
            if self.update == "sparcl":
                keep_d, grow_d = self._sparcl_densities(self.targets[name])
                score = w.abs().flatten()
                if name in self._grads:
                    score = score + self.grad_coef * self._grads[name].abs().flatten()
                new = torch.zeros_like(old)
                new[score.topk(round(keep_d * n)).indices] = True
                n_grow = round(grow_d * n) - round(keep_d * n)
            else:
                k = int(self.drop_fraction_at(t) * layer.nnz)
                if k == 0:
                    continue
                new = old.clone()
                drop = w.abs().flatten().masked_fill(~old, math.inf).topk(k, largest=False)
                new[drop.indices] = False
                n_grow = k
            if n_grow > 0:
                if self.update == "rigl":
                    score = self._grads[name].abs().flatten().masked_fill(new, -math.inf)
                    grow = score.topk(n_grow).indices
                else:
                    dead = (~new).nonzero().squeeze(1)
                    grow = dead[torch.randperm(len(dead), device=dead.device)[:n_grow]]
                new[grow] = True
            layer.set_mask(new.view_as(w))  # dropped weights -> 0; grown ones were 0 already
            for value in optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    value.mul_(layer.mask)  # grown (and dropped) weights: fresh state
            self.method.counter.add_overhead(4 * n, "mask_update")

    def _sparcl_densities(self, d: float) -> tuple[float, float]:
        frac = self.step / self._planned_steps("phases")
        if frac < self.phases[0]:
            return d, min(1.0, d + self.grow_delta)
        if frac < self.phases[1]:
            return max(0.0, d - self.grow_delta), d
        return d, d

    # -- state ----------------------------------------------------------------------------
    def nonzeros(self) -> dict[str, int]:
        """Live weights per masked layer."""
        return {name: layer.nnz for name, layer in self.layers.items()}

    def summary(self):
        live = sum(layer.nnz for layer in self.layers.values())
        total = sum(layer.weight.numel() for layer in self.layers.values())
        return {"sparsity_density": live / total, "sparsity_nonzeros": live}

    def state_dict(self):
        return {"step": self.step}  # the masks are model buffers

    def load_state_dict(self, state):
        self.step = state["step"]
