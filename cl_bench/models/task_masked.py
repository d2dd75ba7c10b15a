"""Linear and conv layers with one learned binary mask per task (supermasks).

Each layer keeps real-valued `scores` shaped like its weight; the live mask is the top-k of
|scores| at the layer's density (edge-popup, Ramanujan et al., CVPR 2020) with a
straight-through gradient to the scores, and the layer computes with `weight * mask`. A
finished task's mask is stored bit-packed (8 weights per byte) in the `packed` buffer, one
row per task of the stream, so it round-trips through the model's state_dict. What the
layer computes with is chosen per forward by `select`: `"live"`, a task id (its stored mask)
or `("superpose", tasks, alphas)` (SupSup's weighted sum of stored masks). With `soft` > 0
a mask m becomes m + (1 - m) * noise, noise ~ U(0, soft) fixed per layer (SoftNet).
Surgery drops the layer's bias, as the reference implementations do (their mask layers
have none): a bias would be shared by every task, and trained, it would change old tasks.

FLOPs (`papers/methods_sparse.md` section 10): the forward and the input gradient count at
the mask's density (k/n; 1 for soft and superposed masks), the weight-side gradient at 1x
while the scores train (their gradient needs the dense product dL/dW_eff), at `grad_frac`
(the fraction of weights allowed to change, e.g. ExSSNeT's exclusive weights) when only the
weights train, 0 when neither does; the dense count is what PyTorch executes.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import conv_flops, linear_flops, register_flops
from cl_bench.errors import ConfigError
from cl_bench.models.masked import pack_bits, unpack_bits


class _TopK(torch.autograd.Function):
    """Top-k of `magnitudes` as a 0/1 mask; straight-through gradient (applied to |scores|,
    so the gradient reaches the scores times their sign, as in edge-popup)."""

    @staticmethod
    def forward(ctx, magnitudes, k):
        flat = magnitudes.detach().reshape(-1)
        mask = torch.zeros_like(flat)
        mask[flat.topk(k, sorted=False).indices] = 1
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class TaskMasked:
    """Mixin of a layer with per-task supermasks over its weight (see the module doc)."""

    scores: nn.Parameter
    packed: torch.Tensor
    k: int
    soft: float = 0.0
    select: object = "live"
    grad_frac: float = 1.0  # weights whose gradient may be non-zero, when only weights train

    def live_mask(self) -> torch.Tensor:
        return _TopK.apply(self.scores.abs(), self.k)

    def stored_mask(self, task: int) -> torch.Tensor:
        """Task `task`'s stored binary mask as floats (cached until the next `store`)."""
        mask = self._cache.get(task)
        if mask is None:
            with torch.inference_mode(False):  # usable for autograd even if built in eval
                mask = unpack_bits(self.packed[task], self.weight.shape).to(self.weight.dtype)
            self._cache[task] = mask
        return mask

    @torch.no_grad()
    def store(self, task: int) -> None:
        """Packs the live mask as task `task`'s mask."""
        self.packed[task] = pack_bits(_TopK.apply(self.scores.abs(), self.k))
        self._cache.pop(task, None)

    def _soften(self, mask: torch.Tensor) -> torch.Tensor:
        return mask + (1 - mask) * self.noise if self.soft > 0 else mask

    def effective_mask(self) -> torch.Tensor:
        sel = self.select
        if sel == "live":
            return self._soften(self.live_mask())
        if isinstance(sel, tuple):  # ("superpose", tasks, alphas)
            _, tasks, alphas = sel
            stack = torch.stack([self._soften(self.stored_mask(t)) for t in tasks])
            return torch.tensordot(alphas, stack, dims=1)
        return self._soften(self.stored_mask(sel))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.effective_mask()

    def density_now(self) -> float:
        """Fraction of the weights the current forward uses."""
        if self.soft > 0 or isinstance(self.select, tuple):
            return 1.0
        return self.k / self.weight.numel()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._cache = {}


class TaskMaskedLinear(TaskMasked, nn.Linear):
    """`nn.Linear` with per-task supermasks (SupSup, ExSSNeT, WSN, SoftNet)."""

    def forward(self, x):
        return F.linear(x, self.masked_weight())


class TaskMaskedConv2d(TaskMasked, nn.Conv2d):
    """`nn.Conv2d` with per-task supermasks (SupSup, ExSSNeT, WSN, SoftNet)."""

    def forward(self, x):
        return self._conv_forward(x, self.masked_weight(), None)


_CLASSES = {nn.Linear: TaskMaskedLinear, nn.Conv2d: TaskMaskedConv2d}


def make_task_masked(module: nn.Module, n_tasks: int, density: float, soft: float = 0.0,
                     weight_init: str = "keep") -> TaskMasked:
    """Turns an `nn.Linear`/`nn.Conv2d` into its task-masked class in place: bias dropped,
    scores Kaiming-uniform (as edge-popup), k = floor(density * n) (at least 1).
    `weight_init="signed_constant"`: each weight +-sqrt(2 / fan_in) with a random sign
    (SupSup's signed Kaiming constant); `"keep"`: the module's own initialisation."""
    module.__class__ = _CLASSES[type(module)]
    module.bias = None
    n = module.weight.numel()
    module.k = max(1, int(density * n))
    module.soft = soft
    module._cache = {}
    if weight_init == "signed_constant":
        fan_in = n // module.weight.shape[0]
        with torch.no_grad():
            module.weight.copy_(torch.randn_like(module.weight).sign()
                                * math.sqrt(2.0 / fan_in))
    elif weight_init != "keep":
        raise ConfigError(f"method.weight_init={weight_init!r}: choose 'signed_constant' or "
                          "'keep'")
    scores = torch.empty_like(module.weight)
    nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
    module.scores = nn.Parameter(scores)
    module.register_buffer("packed", torch.zeros(n_tasks, math.ceil(n / 8), dtype=torch.uint8,
                                                 device=module.weight.device))
    if soft > 0:
        module.register_buffer("noise", torch.rand_like(module.weight) * soft)
    return module


def task_masked_layers(model: nn.Module) -> dict[str, TaskMasked]:
    return {name: m for name, m in model.named_modules() if isinstance(m, TaskMasked)}


def wrap_task_masked(model: nn.Module, n_tasks: int, density: float, soft: float = 0.0,
                     weight_init: str = "keep") -> dict[str, TaskMasked]:
    """Model surgery: every `nn.Linear`/`nn.Conv2d` of `model` becomes task-masked. Models
    with BatchNorm are refused (their statistics would be shared by all tasks)."""
    if not 0 < density <= 1:
        raise ConfigError(f"method.density={density} must be in (0, 1] (the kept fraction; the "
                          "reference code calls it 'sparsity')")
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError("the supermask methods need a model without BatchNorm (per-task "
                          "statistics are not implemented): model=mlp or model=convnet")
    layers = [m for m in model.modules() if type(m) in _CLASSES]
    if not layers:
        raise ConfigError("the supermask methods need a model with Linear/Conv2d layers")
    for m in layers:
        make_task_masked(m, n_tasks, density, soft, weight_init)
    return task_masked_layers(model)


@contextlib.contextmanager
def selecting(layers, select):
    """Every layer of `layers` computes with `select` inside the block."""
    previous = [m.select for m in layers]
    for m in layers:
        m.select = select
    try:
        yield
    finally:
        for m, p in zip(layers, previous, strict=True):
            m.select = p


def _forward_rule(dense_rule):
    def rule(m: TaskMasked, inputs, output):
        dense = dense_rule(m, inputs, output)
        return dense, round(dense * m.density_now())
    return rule


def _backward(m: TaskMasked, inputs, output, forward):
    dense, sparse = forward
    x = inputs[0] if inputs else None
    dx = isinstance(x, torch.Tensor) and x.requires_grad
    scores_train = m.scores.requires_grad and m.select == "live"
    weight_train = m.weight.requires_grad
    dw_dense = dense if (scores_train or weight_train) else 0
    dw = dense if scores_train else round(dense * m.grad_frac) if weight_train else 0
    return dense * dx + dw_dense, sparse * dx + dw


register_flops(TaskMaskedLinear, _forward_rule(linear_flops), backward=_backward)
register_flops(TaskMaskedConv2d, _forward_rule(conv_flops), backward=_backward)
