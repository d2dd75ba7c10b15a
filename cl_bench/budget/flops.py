"""FLOP accounting from the shapes that actually flow through conv and linear layers.

A forward hook on every `nn.Linear` / `nn.Conv*d` adds 2 FLOPs per multiply-accumulate.
When the pass runs with gradients enabled its backward is counted at the same time:
one forward-sized product for the weight gradient when the weight trains, and one for
the input gradient when the input itself needs a gradient (so the lowest trainable
layer pays 1x, a frozen layer that still passes gradients pays 1x, and layers below
the lowest one needing a gradient pay nothing). This is what autograd executes and
matches `torch.utils.flop_counter.FlopCounterMode`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def forward_flops(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return 2 * x.numel() * module.out_features
    macs_per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return 2 * out.numel() * macs_per_output


class FlopCounter:
    """Counts training and evaluation FLOPs of the modules it is attached to."""

    def __init__(self):
        self.train_flops = 0
        self.eval_flops = 0
        self.phase = "train"
        self.enabled = True
        self._handles: list = []
        self.components: dict[str, int] = {}  # train FLOPs by the component they ran under
        self._component: str | None = None

    def attach(self, model: nn.Module) -> FlopCounter:
        for module in model.modules():
            if isinstance(module, COUNTED):
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def evaluating(self):
        previous, self.phase = self.phase, "eval"
        try:
            yield
        finally:
            self.phase = previous

    @contextmanager
    def component(self, name: str):
        """Training FLOPs counted inside also add to `components[name]` (nesting: innermost)."""
        previous, self._component = self._component, name
        try:
            yield
        finally:
            self._component = previous

    def component_columns(self) -> dict[str, int]:
        return {f"flops_{k}": v for k, v in self.components.items()}

    def state_dict(self) -> dict:
        return {"train_flops": self.train_flops, "eval_flops": self.eval_flops,
                "components": dict(self.components)}

    def load_state_dict(self, state: dict) -> None:
        self.train_flops, self.eval_flops = state["train_flops"], state["eval_flops"]
        self.components = dict(state["components"])

    def _hook(self, module, inputs, out):
        if not self.enabled:
            return
        x = inputs[0]
        flops = forward_flops(module, x, out)
        if torch.is_grad_enabled() and out.requires_grad:
            flops += flops * (module.weight.requires_grad + x.requires_grad)
        if self.phase == "train":
            self.train_flops += flops
            if self._component is not None:
                self.components[self._component] = self.components.get(self._component, 0) + flops
        else:
            self.eval_flops += flops
