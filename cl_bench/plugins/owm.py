"""Orthogonal weight modification as plugins of any method.

`owm` follows Zeng, Chen, Cui & Yu, "Continual learning of context-dependent processing in
neural networks" (Nat. Mach. Intell. 2019) and its code (beijixiong3510/OWM); `eowm` adds
the two-sided reading of Li et al., "Defeating Catastrophic Forgetting via Enhanced
Orthogonal Weights Modification" (arXiv 2111.10078, 2021) described on `EOWM`.

What the code does, per `nn.Linear` layer l with input x (bias as a constant input 1, so
the projector has size d = in_features + 1 when the layer has a bias):

* P_l starts as the identity. Each training step the mean input x of the step's batch
  (every training-mode, gradient-enabled forward of the layer in the step) updates it by
  recursive least squares, P <- P - (P x)(P x)^T / (alpha_l + x^T P x), computed as
  P - v v^T with v = P x / sqrt(alpha_l + x^T P x), so P stays exactly symmetric (and
  positive semi-definite: the denominator's x^T P x is clamped at 0). No inverse is formed.
* The layer's gradient [dW | db] is replaced by [dW | db] P (`project=gradient`, the
  paper), and/or the optimiser's whole step Delta[W | b] by Delta[W | b] P
  (`project=update`); `project=both` (the default) does both. Then the change of the
  layer's output on an input x_old that P has absorbed is Delta W x_old ~ 0, so learning a
  new task leaves earlier tasks' activations in place. Under plain SGD the three are the
  same. Under Adam they are not: Adam divides each coordinate of the (projected) gradient
  by its own scale, which takes the step out of P's range (`gradient` alone then forgets
  more than finetuning does on split MNIST), while projecting only the step leaves Adam
  normalising gradients of directions that are then thrown away, so new tasks hardly
  learn (class-IL split MNIST, 3 tasks x 300 steps: `gradient` 0.17, `update` 0.38,
  `both` 0.93, finetuning 0.33). `both` keeps Adam's moments in the free directions and
  the step exactly in P's range.
* `update_during_task=true` (the paper's code): P is updated with every batch while the
  task trains, before that step's projection (so a task also protects its own earlier
  batches, an annealing within the task). `false`: the step means are kept and absorbed
  into P at the end of the task, so a task trains against the projector of the earlier
  tasks only.
* alpha schedule (the paper's code decays alpha over a task, e.g. 0.9 * 0.001^lambda for
  the first layer of its MNIST MLP, lambda = progress through the task): alpha_l at step s
  of a task is alpha_l * alpha_decay_l ** min(s / decay_steps, 1). `alpha_decay=1` keeps
  it constant.

Deviations from the paper's code: no gradient-norm clipping and no per-layer learning
rates (the method's optimiser is used as configured); conv layers are not projected (the
code's per-patch RLS for convolutions is not implemented): a model with trainable
parameters outside `nn.Linear` layers is refused. With an adaptive optimiser (Adam) the
gradient projection is no longer a guarantee (see above), hence `project=both`; and the
optimiser state of the projected parameters is dropped at every task boundary so that
momentum of the previous task does not leak across.

FLOPs (`flops_projector`): per projected layer and step, 4 d^2 + 2 d for the RLS update
(P x, x^T P x, the rank-1 correction) and 2 m d^2 for each projection of the m x d
gradient or step (two with `project=both`); EOWM adds 2 m d for the mean output,
4 m^2 + 2 m for its update and 2 m^2 d for each left projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


class _InputCapture:
    """Forward pre-hook summing one layer's inputs during training steps (training mode,
    gradients on). A deep copy of the model (a teacher) shares it and is ignored."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.total: torch.Tensor | None = None
        self.count = 0

    def __deepcopy__(self, memo):
        return self

    def __call__(self, module, args):
        if module is not self.module or not module.training or not torch.is_grad_enabled():
            return
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1]).float()
        total = x.sum(0)
        self.total = total if self.total is None else self.total + total
        self.count += x.shape[0]

    def take_mean(self) -> torch.Tensor | None:
        """The mean input since the last call (None if the layer ran no training pass)."""
        if self.total is None:
            return None
        mean = self.total / self.count
        self.total, self.count = None, 0
        return mean


def _values(value) -> list:
    """One value or a list (a ListConfig from Hydra too) as a list."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
        else [value]


def rls_update(P: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
    """In place: P <- P - (P x)(P x)^T / (alpha + x^T P x), for symmetric P, kept
    exactly symmetric (a symmetric rank-1 correction v v^T)."""
    k = P @ x
    denom = alpha + torch.dot(x, k).clamp(min=0)
    v = k / denom.sqrt()
    P.sub_(torch.outer(v, v))


def rls_flops(d: int) -> int:
    """FLOPs of `rls_update` on a d x d projector: 2 d^2 (P x) + 2 d (x^T P x) + 2 d^2
    (the rank-1 correction, one multiply and one subtraction per entry)."""
    return 4 * d * d + 2 * d


class _Layer:
    """One projected linear layer: its projector(s), alpha schedule and captured inputs."""

    def __init__(self, module: nn.Linear, alpha: float, decay: float, alpha_out: float | None):
        self.module = module
        self.alpha, self.decay, self.alpha_out = alpha, decay, alpha_out
        weight = module.weight
        self.has_bias = module.bias is not None
        self.d = module.in_features + self.has_bias
        self.m = module.out_features
        self.P = torch.eye(self.d, device=weight.device)
        self.Q = torch.eye(self.m, device=weight.device) if alpha_out is not None else None
        self.capture = _InputCapture(module)
        self.handle = module.register_forward_pre_hook(self.capture)
        # step means (with their alpha) kept for the end of the task
        self.pending: list[tuple[torch.Tensor, float]] = []
        self.before: torch.Tensor | None = None  # [W | b] before the step (update, both)

    def params(self) -> list[nn.Parameter]:
        return [self.module.weight] + ([self.module.bias] if self.has_bias else [])

    def joined(self) -> torch.Tensor:
        """[W | b], m x d."""
        w = self.module.weight.detach()
        if not self.has_bias:
            return w.clone()
        return torch.cat([w, self.module.bias.detach()[:, None]], 1)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_ones(1)]) if self.has_bias else x


@schema("plugin", "owm")
@dataclass
class OWMConf(PluginConf):
    _target_: str = "cl_bench.plugins.owm.OWM"
    alpha: Any = 1.0  # RLS constant, one value or one per linear layer (input to head)
    alpha_decay: Any = 1.0  # alpha * alpha_decay ** progress through the task
    decay_steps: int | None = None  # steps over which alpha decays (null: needs alpha_decay=1)
    # true: P absorbs every batch as the task trains (paper); false: at the task's end
    update_during_task: bool = True
    project: str = "both"  # both | gradient (the paper) | update (the optimiser's step)


@defaults_from(OWMConf)
class OWM(Plugin):
    """Orthogonal weight modification (Zeng et al., Nat. Mach. Intell. 2019): every linear
    layer's weight change is projected onto the orthogonal complement of the (batch-mean)
    inputs of what it learned before, through a recursive-least-squares projector P_l."""

    needs = frozenset({"plain_model"})
    nearest = "method=owm (finetune with plugin owm)"

    # Smaller alpha = more stable, the opposite of what `clbench-tune` decays (it starts a
    # knob high as most stable), so alpha is not declared a stability knob.
    stability_knobs = ()

    def __init__(self, alpha: Any, alpha_decay: Any, decay_steps: int | None,
                 update_during_task: bool, project: str):
        self.key = "owm"
        if project not in ("gradient", "update", "both"):
            raise ValueError(f"plugins.{self.key}.project={project!r}: choose 'gradient' (the "
                             "paper: project the gradient), 'update' (project the optimiser's "
                             "step) or 'both'")
        for name, value in (("alpha", alpha), ("alpha_decay", alpha_decay)):
            values = _values(value)
            if not values or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
                raise ValueError(f"plugins.{self.key}.{name}={value}: give one number > 0 or "
                                 "a list of them, one per linear layer")
        if decay_steps is not None and decay_steps < 1:
            raise ValueError(f"plugins.{self.key}.decay_steps={decay_steps} must be >= 1")
        self.alpha, self.alpha_decay, self.decay_steps = alpha, alpha_decay, decay_steps
        self.update_during_task = update_during_task
        self.project = project
        self.layers: list[_Layer] = []
        self.step_in_task = 0

    # -- set-up ---------------------------------------------------------------------------
    def _per_layer(self, value, name: str, n: int) -> list[float]:
        if not isinstance(value, Sequence):
            return [float(value)] * n
        values = list(value)
        if len(values) != n:
            raise ValueError(f"plugins.{self.key}.{name} has {len(values)} values but the model "
                             f"has {n} trainable linear layers; give one value or {n}")
        return [float(v) for v in values]

    def _alpha_out(self, n: int) -> list[float | None]:
        return [None] * n

    def wrap_model(self, model):
        linears = [m for m in model.modules()
                   if isinstance(m, nn.Linear) and m.weight.requires_grad]
        others = [name or type(model).__name__ for name, m in model.named_modules()
                  if not isinstance(m, nn.Linear)
                  and any(p.requires_grad for p in m.parameters(recurse=False))]
        if others or not linears:
            found = f"trainable parameters outside nn.Linear in {others}" if others \
                else "no trainable nn.Linear layer"
            raise ValueError(f"plugin={self.key} projects nn.Linear layers only and found "
                             f"{found}; use a model whose trainable layers are all linear "
                             "(model=mlp, or a frozen feature extractor)")
        n = len(linears)
        alphas = self._per_layer(self.alpha, "alpha", n)
        decays = self._per_layer(self.alpha_decay, "alpha_decay", n)
        if any(d != 1 for d in decays) and self.decay_steps is None:
            raise ValueError(f"plugins.{self.key}.alpha_decay needs plugins.{self.key}."
                             "decay_steps (the steps over which alpha decays, e.g. the "
                             "budget's iterations per task)")
        self.layers = [_Layer(m, a, d, ao) for m, a, d, ao
                       in zip(linears, alphas, decays, self._alpha_out(n), strict=True)]
        return model

    # -- the step -------------------------------------------------------------------------
    def _alpha(self, layer: _Layer) -> float:
        if layer.decay == 1:
            return layer.alpha
        progress = min(self.step_in_task / self.decay_steps, 1.0)
        return layer.alpha * layer.decay ** progress

    def _absorb(self, layer: _Layer, x: torch.Tensor, alpha: float) -> None:
        """Update the layer's projector(s) with the mean input x (augmented)."""
        counter = self.method.counter
        if layer.Q is not None:  # EOWM: the mean output [W | b] x of the same step
            y = layer.joined() @ x
            rls_update(layer.Q, y, layer.alpha_out)
            counter.add(2 * layer.m * layer.d + rls_flops(layer.m), "projector")
        rls_update(layer.P, x, alpha)
        counter.add(rls_flops(layer.d), "projector")

    def _projected(self, layer: _Layer, g: torch.Tensor) -> torch.Tensor:
        counter = self.method.counter
        g = g @ layer.P
        counter.add(2 * layer.m * layer.d * layer.d, "projector")
        if layer.Q is not None:
            g = layer.Q @ g
            counter.add(2 * layer.m * layer.m * layer.d, "projector")
        return g

    @torch.no_grad()
    def after_backward(self, batch):
        for layer in self.layers:
            x = layer.capture.take_mean()
            if x is not None:
                x = layer.augment(x)
                if self.update_during_task:
                    self._absorb(layer, x, self._alpha(layer))
                else:
                    layer.pending.append((x, self._alpha(layer)))
            if self.project != "gradient":
                layer.before = layer.joined()
            if self.project == "update":
                continue
            w, b = layer.module.weight, layer.module.bias
            if w.grad is None and (b is None or b.grad is None):
                continue
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            if layer.has_bias:
                gb = b.grad if b.grad is not None else torch.zeros_like(b)
                g = torch.cat([g, gb[:, None]], 1)
            g = self._projected(layer, g)
            w.grad = g[:, : w.shape[1]].contiguous()
            if layer.has_bias:
                b.grad = g[:, -1].contiguous()
        self.step_in_task += 1

    @torch.no_grad()
    def after_step(self, batch):
        for layer in self.layers:
            layer.capture.take_mean()  # drop inputs of a step without backward
            if layer.before is None:
                continue
            step = self._projected(layer, layer.joined() - layer.before)
            new = layer.before + step
            layer.module.weight.copy_(new[:, : layer.module.in_features])
            if layer.has_bias:
                layer.module.bias.copy_(new[:, -1])
            layer.before = None

    # -- task boundaries ------------------------------------------------------------------
    def before_task(self, task):
        self.step_in_task = 0
        state = self.method.optimizer.state
        for layer in self.layers:  # momentum of the previous task would bypass P
            for p in layer.params():
                state.pop(p, None)

    @torch.no_grad()
    def after_task(self, task):
        for layer in self.layers:
            for x, alpha in layer.pending:
                self._absorb(layer, x, alpha)
            layer.pending.clear()
        artifacts = self.method.ctx.artifacts
        if artifacts.enabled:  # the capacity left after each task, `<plugin>.csv`
            artifacts.write_csv(
                f"{self.key}.csv", ["task", "layer", "dim", "trace_P"],
                [[task.id, i, layer.d, round(free, 3)] for i, (layer, free) in
                 enumerate(zip(self.layers, self.free_dims(), strict=True))],
                append=task.id > 0)

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self):
        return {"P": [layer.P.clone() for layer in self.layers],
                "Q": [None if layer.Q is None else layer.Q.clone() for layer in self.layers],
                "step_in_task": self.step_in_task}

    def load_state_dict(self, state):
        for layer, P, Q in zip(self.layers, state["P"], state["Q"], strict=True):
            layer.P.copy_(P)
            if layer.Q is not None:
                layer.Q.copy_(Q)
        self.step_in_task = state["step_in_task"]

    def free_dims(self) -> list[float]:
        """trace(P_l) per layer: roughly how many input directions are still free (the
        capacity left; EOWM's bound on the number of learnable tasks is of this kind)."""
        return [float(layer.P.trace()) for layer in self.layers]


@schema("plugin", "eowm")
@dataclass
class EOWMConf(OWMConf):
    _target_: str = "cl_bench.plugins.owm.EOWM"
    alpha_out: Any = 1.0  # RLS constant of the output-side projector


@defaults_from(EOWMConf)
class EOWM(OWM):
    """Enhanced OWM (Li et al., arXiv 2111.10078, 2021), as far as it could be checked.

    The paper's body could not be read here; its abstract states that the weight gradient
    of a new task is determined both by the input space of the new task and by the weight
    space of the previously learned tasks, and builds on recursive least squares. This
    plugin implements that reading as a two-sided projection: besides the input-side P_l
    of OWM, each layer keeps an output-side RLS projector Q_l (out_features square, updated
    with the layer's mean output [W | b] x of each step, i.e. the directions the learned
    weights map earlier inputs to), and the gradient (or step) becomes Q_l [dW | db] P_l.
    Q_l removes the components of a change that would move old outputs along the
    directions they already occupy, on top of P_l's protection of old inputs; `alpha_out`
    is its RLS constant (smaller = stricter). Everything else is OWM's."""

    def __init__(self, alpha: Any, alpha_decay: Any, decay_steps: int | None,
                 update_during_task: bool, project: str,
                 alpha_out: Any):
        super().__init__(alpha, alpha_decay, decay_steps, update_during_task, project)
        self.key = "eowm"
        values = _values(alpha_out)
        if not values or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
            raise ValueError(f"plugins.eowm.alpha_out={alpha_out}: give one number > 0 or a "
                             "list of them, one per linear layer")
        self.alpha_out = alpha_out

    def _alpha_out(self, n: int) -> list[float | None]:
        return self._per_layer(self.alpha_out, "alpha_out", n)
