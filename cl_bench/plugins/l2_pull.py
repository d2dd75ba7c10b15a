"""An L2 pull toward the weights at the end of the previous task."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "l2_pull")
@dataclass
class L2PullConf(PluginConf):
    _target_: str = "cl_bench.plugins.l2_pull.L2Pull"
    strength: float = 1.0


@defaults_from(L2PullConf)
class L2Pull(Plugin):
    """L2 regularisation toward the previous task's solution, the plain (unweighted)
    quadratic penalty that EWC (Kirkpatrick et al., PNAS 2017) weights by the Fisher
    information: loss term `l2_pull` = strength / 2 * sum_i (theta_i - theta*_i)^2 over the
    trainable parameters, theta* taken at the end of each task (none during the first)."""

    stability_knobs = ("strength",)

    def __init__(self, strength: float):
        if strength < 0:
            raise ValueError(f"plugins.l2_pull.strength={strength} must be >= 0")
        self.strength = strength
        self.anchor: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def loss(self, batch):
        if not self.anchor:
            return {}
        penalty = sum((p - p0).pow(2).sum() for p, p0 in self.anchor)
        return {"l2_pull": 0.5 * self.strength * penalty}

    def after_task(self, task):
        self.anchor = [(p, p.detach().clone()) for p in self.method.trainable_parameters()]

    def state_dict(self):
        return {"anchor": [p0 for _, p0 in self.anchor]}

    def load_state_dict(self, state):
        params = list(self.method.trainable_parameters())
        self.anchor = [(p, p0.to(p.device)) for p, p0 in zip(params, state["anchor"], strict=False)]
