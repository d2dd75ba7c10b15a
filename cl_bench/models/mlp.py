"""Fully connected classifier: the standard backbone of MNIST-scale CL benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from cl_bench.schemas import defaults_from, schema


@schema("model", "mlp")
@dataclass
class MLPConf:
    _target_: str = "cl_bench.models.mlp.MLP"
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [400, 400])
    head: str = "linear"  # linear | nmc (predict by nearest class mean)


@defaults_from(MLPConf)
class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] x len(hidden) -> Linear head (e.g. the 2x400 MLP of
    van de Ven et al., 2020, or the 2x100 MLP of the DER paper)."""

    def __init__(self, input_shape, n_classes: int, hidden, head: str):
        super().__init__()
        if head not in ("linear", "nmc"):
            raise ValueError(f"model.head={head!r}: choose 'linear' or 'nmc'")
        if any(h < 1 for h in hidden):
            raise ValueError(f"model.hidden={list(hidden)}: every layer width must be >= 1 "
                             "(model.hidden=[] for no hidden layer)")
        self.head_kind = head  # nmc: predict by nearest class mean (plugins/stability_gap.py)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        self.feature_dim = width

    def forward(self, x):
        return self.head(self.features(x))
