"""Label-conditioned energy network of the energy-based classifier (Li, Du, van de Ven &
Mordatch, "Energy-Based Models for Continual Learning", CoLLAs 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import register_flops
from cl_bench.schemas import defaults_from, schema


class LabelScores(nn.Module):
    """h [B, H] x label weights [K, H] -> [B, K] (a module, so the FLOP counter sees it)."""

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return h @ weights.T


register_flops(LabelScores, lambda m, inputs, out: 2 * out.numel() * inputs[0].shape[1])


@schema("model", "ebm_mlp")
@dataclass
class EBMMLPConf:
    _target_: str = "cl_bench.models.ebm.EBMMLP"
    name: str = "ebm_mlp"
    hidden: int = 400
    layers: int = 1  # 1: boundary-aware network; 2: boundary-agnostic (a second gated layer)


@defaults_from(EBMMLPConf)
class EBMMLP(nn.Module):
    """The paper's split-MNIST `EBM_MLP`: h = W1 x; with e_y = normalize(Embedding(y)),
    h' = ReLU(h + h * e_y) (with `layers=2` once more after W2, the boundary-agnostic
    network of the reference code); E(x, y) = w . h' + b, a scalar.

    `forward(x, labels)` gives the energies [B, K] of each sample against K labels:
    `labels` of shape [B, K] (per sample), [K] (shared by the batch) or None (every
    class). W1 x is computed once per sample and broadcast over the labels."""

    def __init__(self, input_shape, n_classes: int, hidden: int, layers: int):
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"model.layers={layers}: choose 1 (boundary-aware network) or 2 "
                             "(boundary-agnostic network)")
        if hidden < 1:
            raise ValueError(f"model.hidden={hidden} must be >= 1")
        self.n_classes = n_classes
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, hidden) if layers == 2 else None
        self.label_embedding = nn.Embedding(n_classes, hidden)
        self.energy = nn.Linear(hidden, 1)
        self.scores = LabelScores()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.arange(self.n_classes, device=x.device)
        gate = F.normalize(self.label_embedding(labels), dim=-1)  # [K, H] or [B, K, H]
        if gate.dim() == 2 and self.fc2 is None and not torch.is_grad_enabled():
            # labels shared by the batch (evaluation): as |gate| <= 1 elementwise,
            # ReLU(h + h * g) = (1 + g) * ReLU(h), so the energies are one [B, H] x [H, K]
            # product instead of a [B, K, H] tensor
            weights = (1 + gate) * self.energy.weight
            return self.scores(F.relu(self.fc1(x.flatten(1))), weights) + self.energy.bias
        if gate.dim() == 2:
            gate = gate.unsqueeze(0)
        h = self.fc1(x.flatten(1)).unsqueeze(1)  # [B, 1, H]
        h = F.relu(h + h * gate)  # [B, K, H]
        if self.fc2 is not None:
            h = self.fc2(h)
            h = F.relu(h + h * gate)
        return self.energy(h).squeeze(-1)


@schema("model", "ebm_gated")
@dataclass
class EBMGatedConf:
    _target_: str = "cl_bench.models.ebm.EBMGated"
    name: str = "ebm_gated"
    hidden: list[int] = field(default_factory=lambda: [2000, 2000])
    mask_prob: float = 0.85  # probability that a unit is gated off for a class


@defaults_from(EBMGatedConf)
class EBMGated(nn.Module):
    """The paper's split-CIFAR-100 energy network (`EBM_net_cifar100` of the reference, on
    the frozen conv5 features): fc layers whose units are gated by a fixed random binary
    mask per class (each unit of each layer off with probability `mask_prob`, 0.85 as in
    BI-R's gating; drawn once from the run's seed, never trained), ReLU after each gate,
    then a scalar energy. `forward(x, labels)` as `EBMMLP`; the first layer runs once per
    sample, the later ones once per (sample, label)."""

    def __init__(self, input_shape, n_classes: int, hidden,
                 mask_prob: float):
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"model.hidden={list(hidden)}: give one or more widths >= 1")
        if not 0 <= mask_prob < 1:
            raise ValueError(f"model.mask_prob={mask_prob}: the probability that a unit is "
                             "gated off for a class, in [0, 1)")
        self.n_classes = n_classes
        widths = [math.prod(input_shape), *hidden]
        self.fcs = nn.ModuleList(nn.Linear(a, b)
                                 for a, b in zip(widths[:-1], widths[1:], strict=True))
        for i, h in enumerate(hidden):
            self.register_buffer(f"gate{i}", (torch.rand(n_classes, h) >= mask_prob).float())
        self.energy = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.arange(self.n_classes, device=x.device)
        h = x.flatten(1).unsqueeze(1)  # [B, 1, D]
        for i, fc in enumerate(self.fcs):
            gate = getattr(self, f"gate{i}")[labels]  # [K, H] or [B, K, H]
            h = F.relu(fc(h) * gate)  # [B, K, H]
        return self.energy(h).squeeze(-1)
