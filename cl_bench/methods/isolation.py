"""Shared parts of the parameter-isolation methods (PackNet, HAT, CP&S, NISPA).

`ViewLinear` / `ViewConv2d` are the masked layers of `cl_bench.models.masked` with a
non-destructive mask: the forward uses `weight * mask`, so one set of weights serves
every task's view (a task's subnetwork) and a view never zeroes another task's weights.
Their FLOP rules are the masked layers' (`papers/methods_sparse.md` section 10): forward
and input gradient at the view's density, weight gradient at `grad_keep` x the view's
live weights (the weights this task may still train; PyTorch computes them densely, the
"as executed" count). Masks are stored bit-packed (`masked.pack_bits`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.methods.base import Method
from cl_bench.models.masked import Masked, MaskedConv2d, MaskedLinear, maskable


class _View:
    def apply_mask(self) -> None:  # the mask selects a view; the weights stay as they are
        pass

    def set_view(self, mask: torch.Tensor, trainable: torch.Tensor | None = None) -> None:
        """Installs a view (bool or 0/1 mask) and the fraction of its live weights that
        train (`trainable`, a bool mask; None: none). One host sync: at phase changes."""
        self.mask.copy_(mask)
        self.nnz = int(self.mask.sum())
        live = 0 if trainable is None else int((trainable & mask.bool()).sum())
        self.grad_keep = live / self.nnz if self.nnz else 0.0


class ViewLinear(_View, MaskedLinear):
    """`nn.Linear` computing with `weight * mask` (the weights outside the view are kept)."""

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class ViewConv2d(_View, MaskedConv2d):
    """`nn.Conv2d` computing with `weight * mask` (the weights outside the view are kept)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, self.bias)


_VIEW = {nn.Linear: ViewLinear, nn.Conv2d: ViewConv2d}


def view_layers(model: nn.Module, dense: list[str] | tuple[str, ...],
                key: str) -> dict[str, Masked]:
    """The `nn.Linear`/`nn.Conv2d` layers of `model` not matching `dense`, turned into
    view layers in place (mask all ones), in forward order."""
    found = maskable(model, dense)
    if not found:
        raise ValueError(f"{key}: the model has no nn.Linear/nn.Conv2d layer outside "
                         f"dense_layers={list(dense)}")
    for module in found.values():
        module.__class__ = _VIEW[type(module)]
        module.register_buffer("mask", torch.ones_like(module.weight, requires_grad=False))
        module.nnz = module.weight.numel()
    return found


class TaskAware(Method):
    """Base of the task-aware isolation methods: one task's classes per training loss
    (a per-task head on the shared output layer), a fresh optimiser per task (Adam moments
    of an earlier task would move weights it froze), and prediction per task id."""

    predict_needs_task_ids = True
    supported_streams = ("task",)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.task = -1  # the task being (or last) trained

    def loss_logits(self, logits, task_ids):
        return logits.masked_fill(~self.class_mask[task_ids], float("-inf"))

    def before_task(self, task):
        self.task = task.id
        self.reset_optimizer()
        for group in self.optimizer.param_groups:
            if group.get("weight_decay", 0):
                raise ValueError(f"method={self.name} needs optimizer.weight_decay=0 (decay "
                                 "would move the weights earlier tasks own)")

    def resume_task(self, task):
        self.task = task.id

    layers: dict[str, Masked]  # the view layers (set by `wrap_model`)

    def view_masks(self, t: int) -> dict[str, torch.Tensor]:
        """Task `t`'s view: a bool mask per view layer."""
        raise NotImplementedError

    def forward_task(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Logits of preprocessed `x` under task `t`'s view (the training view is put
        back afterwards)."""
        saved = {name: (layer.mask.clone(), layer.nnz, layer.grad_keep)
                 for name, layer in self.layers.items()}
        try:
            for name, mask in self.view_masks(t).items():
                self.layers[name].set_view(mask)
            return self.model(x)
        finally:
            for name, (mask, nnz, keep) in saved.items():
                layer = self.layers[name]
                layer.mask.copy_(mask)
                layer.nnz, layer.grad_keep = nnz, keep

    def weight_total(self) -> int:
        return sum(layer.weight.numel() for layer in self.layers.values())

    @torch.no_grad()
    def predict_logits(self, x, task_ids=None):
        if task_ids is None:
            return self.forward_task(x, max(self.task, 0))
        tasks = task_ids.unique().tolist()  # evaluation only: one sync per batch
        if len(tasks) == 1:
            return self.forward_task(x, tasks[0])
        out = None
        for t in tasks:
            sel = task_ids == t
            logits = self.forward_task(x[sel], t)
            if out is None:
                out = logits.new_empty(len(x), logits.shape[1])
            out[sel] = logits
        return out
