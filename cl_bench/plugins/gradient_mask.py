"""SparCL's dynamic gradient masking."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.models.masked import Masked
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "gradient_mask")
@dataclass
class GradientMaskConf(PluginConf):
    _target_: str = "cl_bench.plugins.gradient_mask.GradientMask"
    keep: float = 0.8  # fraction of the live weights whose gradient is applied (and counted)
    refresh: int = 30  # steps between re-selections (SparCL: every 30 minibatches)


@defaults_from(GradientMaskConf)
class GradientMask(Plugin):
    """Dynamic gradient masking of SparCL (Wang et al., NeurIPS 2022; `neu-spiral/SparCL`
    `apply_masks_on_grads_efficient`): of each masked layer's live weights only the `keep`
    fraction with the largest gradient magnitude is updated; the selection is refreshed
    every `refresh` steps and reused in between. `keep` is a fraction of the *live* weights
    (the reference's `gradient_sparse=0.8` of all entries at 75% sparsity is keep=0.8).
    The weight-gradient FLOPs count keep x nnz entries. Needs `plugins.sparsity` (listed
    before it)."""

    needs_plugins = ("sparsity",)

    def __init__(self, keep: float, refresh: int):
        if not 0 < keep <= 1:
            raise ValueError(f"plugins.gradient_mask.keep={keep} must be in (0, 1]")
        if refresh < 1:
            raise ValueError(f"plugins.gradient_mask.refresh={refresh} must be >= 1 (steps)")
        self.keep, self.refresh = keep, refresh
        self.step = 0
        self.kept: dict[int, torch.Tensor] = {}

    def _layers(self) -> list[Masked]:
        layers = [m for m in self.method.model.modules() if isinstance(m, Masked)]
        if not layers:
            raise ValueError("plugins.gradient_mask needs masked layers: add the sparsity "
                             "plugin before it, e.g. plugin=[sparsity,gradient_mask]")
        return layers

    def before_task(self, task):
        self.layers = self._layers()
        for layer in self.layers:
            layer.grad_keep = self.keep

    @torch.no_grad()
    def after_backward(self, batch):
        refresh = self.step % self.refresh == 0
        for i, layer in enumerate(self.layers):
            grad = layer.weight.grad
            if grad is None:
                continue
            if refresh or i not in self.kept:  # a layer without a gradient at the refresh
                g = (grad * layer.mask).abs().flatten()
                kept = torch.zeros_like(layer.mask).flatten()
                kept[g.topk(round(self.keep * layer.nnz)).indices] = True
                self.kept[i] = kept.view_as(grad)
                self.method.counter.add_overhead(2 * grad.numel(), "gradient_mask")
            grad.mul_(self.kept[i])

    def after_step(self, batch):
        self.step += 1

    def state_dict(self):
        return {"step": self.step, "kept": dict(self.kept)}

    def load_state_dict(self, state):
        self.step, self.kept = state["step"], dict(state["kept"])
