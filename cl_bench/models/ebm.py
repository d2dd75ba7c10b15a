"""Label-conditioned energy network of the energy-based classifier (Li, Du, van de Ven &
Mordatch, "Energy-Based Models for Continual Learning", CoLLAs 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.schemas import schema


class EBMMLP(nn.Module):
    """The paper's split-MNIST `EBM_MLP`: h = W1 x; with e_y = normalize(Embedding(y)),
    h' = ReLU(h + h * e_y) (with `layers=2` once more after W2, the boundary-agnostic
    network of the reference code); E(x, y) = w . h' + b, a scalar.

    `forward(x, labels)` gives the energies [B, K] of each sample against K labels:
    `labels` of shape [B, K] (per sample), [K] (shared by the batch) or None (every
    class). W1 x is computed once per sample and broadcast over the labels."""

    def __init__(self, input_shape, n_classes: int, hidden: int = 400, layers: int = 1):
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

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.arange(self.n_classes, device=x.device)
        gate = F.normalize(self.label_embedding(labels), dim=-1)  # [K, H] or [B, K, H]
        if gate.dim() == 2:
            gate = gate.unsqueeze(0)
        h = self.fc1(x.flatten(1)).unsqueeze(1)  # [B, 1, H]
        h = F.relu(h + h * gate)  # [B, K, H]
        if self.fc2 is not None:
            h = self.fc2(h)
            h = F.relu(h + h * gate)
        return self.energy(h).squeeze(-1)


@schema("model", "ebm_mlp")
@dataclass
class EBMMLPConf:
    _target_: str = "cl_bench.models.ebm.EBMMLP"
    name: str = "ebm_mlp"
    hidden: int = 400
    layers: int = 1  # 1: boundary-aware network; 2: boundary-agnostic (a second gated layer)
