"""Masked linear and conv layers (one binary weight mask each) and their layer densities.

A masked layer keeps its weight at zero where its mask is 0, so its forward is the dense
kernel unchanged and PyTorch's weight gradient stays dense (RigL grows from it); whoever
owns the mask (the `sparsity` plugin) zeroes masked gradients before the optimiser step
and re-applies the mask after it. Model surgery swaps the class of existing `nn.Linear`
/ `nn.Conv2d` modules in place, so parameters, names and hooks are kept.

FLOPs (`papers/methods_sparse.md` section 10): the forward and the input gradient count
at the weight density nnz/n, the weight gradient at `grad_nnz()`/n (the mask's nnz; n on
a dense-gradient step such as RigL's update; fewer under gradient masking); the dense
count is what PyTorch executes.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import conv_flops, linear_flops, register_flops

_BITS = 2 ** torch.arange(7, -1, -1, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool/0-1 tensor as uint8 bytes, 8 entries per byte (MSB first), zero-padded."""
    flat = mask.reshape(-1).bool()
    flat = F.pad(flat, (0, (-flat.numel()) % 8)).view(-1, 8).to(torch.uint8)
    return (flat * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed."""
    bits = (packed.unsqueeze(1) & _BITS.to(packed.device)) != 0
    return bits.reshape(-1)[: math.prod(shape)].reshape(shape)


class Masked:
    """Mixin of a layer with a binary `mask` buffer (0./1. in the weight's dtype) over its
    weight."""

    mask: torch.Tensor
    nnz: int
    dense_grad = False  # this step computes the weight gradient densely (RigL update step)
    grad_keep = 1.0     # fraction of the live weights whose gradient is computed (SparCL DGM)

    def set_mask(self, mask: torch.Tensor) -> None:
        """Installs `mask` and zeroes the weights it turns off (one host sync)."""
        self.mask.copy_(mask)
        self.nnz = int(self.mask.sum())
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self) -> None:
        self.weight.mul_(self.mask)

    def grad_nnz(self) -> int:
        """Weight-gradient entries this step computes (theoretically)."""
        if self.dense_grad:
            return self.weight.numel()
        return round(self.grad_keep * self.nnz)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.nnz = int(self.mask.sum())


class MaskedLinear(Masked, nn.Linear):
    """`nn.Linear` with a weight mask (sparse training: RigL, SET, SparCL)."""


class MaskedConv2d(Masked, nn.Conv2d):
    """`nn.Conv2d` with a weight mask (sparse training: RigL, SET, SparCL)."""


_MASKED = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}


def make_masked(module: nn.Module) -> Masked:
    """Turns an `nn.Linear`/`nn.Conv2d` into its masked class in place (mask all ones)."""
    if isinstance(module, Masked):
        return module
    module.__class__ = _MASKED[type(module)]
    # in the weight's dtype: multiplying by a bool tensor converts it on every call (~8x slower)
    module.register_buffer("mask", torch.ones_like(module.weight, requires_grad=False))
    module.nnz = module.weight.numel()
    return module


def maskable(model: nn.Module, dense: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """The `nn.Linear`/`nn.Conv2d` modules of `model` by name, less those matching one of
    the fnmatch patterns `dense` (e.g. `head`, `conv1`, `*shortcut*`)."""
    return {name: m for name, m in model.named_modules()
            if type(m) in _MASKED or isinstance(m, Masked)
            if not any(fnmatch.fnmatchcase(name, p) for p in dense)}


def _masked_forward(dense_rule):
    def rule(m: Masked, inputs, output):
        dense = dense_rule(m, inputs, output)
        return dense, dense * m.nnz // m.weight.numel()
    return rule


def _masked_backward(m: Masked, inputs, output, forward):
    dense, sparse = forward
    x = inputs[0] if inputs else None
    dx = isinstance(x, torch.Tensor) and x.requires_grad
    dw = m.weight.requires_grad
    return (dense * (dx + dw),
            sparse * dx + (dense * m.grad_nnz() // m.weight.numel() if dw else 0))


register_flops(MaskedLinear, _masked_forward(linear_flops), backward=_masked_backward)
register_flops(MaskedConv2d, _masked_forward(conv_flops), backward=_masked_backward)


def layer_densities(shapes: list[tuple[int, ...]], density: float,
                    distribution: str = "uniform", power: float = 1.0) -> list[float]:
    """Per-layer densities with total non-zeros density x sum(n_l).

    `uniform`: every layer at `density`. `erk` (Erdős–Rényi-Kernel, Evci et al., ICML
    2020): d_l = eps * r_l with r_l = (sum of the weight's dimensions / their product)^power
    and eps solved for the total; a layer whose d_l would exceed 1 is made dense and eps
    solved again over the rest (as in `google-research/rigl` sparse_utils)."""
    if not 0 < density <= 1:
        raise ValueError(f"plugins.sparsity.density={density} must be in (0, 1]")
    if distribution == "uniform":
        return [density] * len(shapes)
    if distribution != "erk":
        raise ValueError(f"plugins.sparsity.distribution={distribution!r}: choose 'uniform' "
                         "or 'erk'")
    sizes = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power for s in shapes]
    dense: set[int] = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1]
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        top = max(raw[i] for i in over)
        dense |= {i for i in over if raw[i] == top}
