"""Conditional VAE over a classifier's levels: the generator of generative replay (Shin et
al., 2017), internal replay / BI-R (van de Ven et al., 2020) and Progressive Latent Replay
(Pawlak et al., 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LevelVAE(nn.Module):
    """VAE whose encoder reads a_0 and whose decoder mirrors the classifier in reverse.

    `dims` are the widths of a_0 .. a_{L-1}. The encoder is an MLP over a_0 with the
    classifier's hidden widths; `fromZ` maps z to a_{L-1}'s width and decoder layer j
    (j = 1 .. L-1) emits level L-1-j, so decoding stops as soon as the deepest level a
    sample needs is made. Prior: one learnable Gaussian mode per class (`per_class_prior`)
    or N(0, I). `gate_prop` > 0 multiplies the decoder's hidden units by a fixed random
    per-class binary mask (BI-R's gating based on internal context).
    """

    def __init__(self, dims: list[int], n_classes: int, z_dim: int = 100,
                 per_class_prior: bool = True, gate_prop: float = 0.0, seed: int = 0):
        super().__init__()
        self.dims = list(dims)
        self.z_dim = z_dim
        self.per_class_prior = per_class_prior
        enc, width = [], dims[0]
        for h in dims[1:]:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.to_z = nn.Linear(width, 2 * z_dim)
        self.from_z = nn.Linear(z_dim, dims[-1])
        # decoder[j] maps level L-1-j to level L-2-j
        self.decoder = nn.ModuleList(nn.Linear(dims[i], dims[i - 1])
                                     for i in range(len(dims) - 1, 0, -1))
        gen = torch.Generator().manual_seed(seed)
        self.prior_mean = nn.Parameter(torch.randn(n_classes, z_dim, generator=gen)
                                       if per_class_prior else torch.zeros(0, z_dim))
        self.prior_logvar = nn.Parameter(torch.zeros(n_classes if per_class_prior else 0, z_dim))
        self.gate_prop = gate_prop
        for i, units in enumerate(dims[:0:-1]):  # hidden decoder outputs: a_{L-1} .. a_1
            mask = (torch.rand(n_classes, units, generator=gen) >= gate_prop).float()
            self.register_buffer(f"gate{i}", mask)

    # -- decoding --------------------------------------------------------------------------
    def _gate(self, h: torch.Tensor, i: int, y: torch.Tensor | None) -> torch.Tensor:
        if self.gate_prop <= 0 or y is None:
            return h
        return h * getattr(self, f"gate{i}")[y]

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None,
               down_to: int = 0) -> list[torch.Tensor | None]:
        """Levels [a_0 .. a_{L-1}] decoded from z, only as far down as level `down_to`
        (levels below it are None). The lowest level is linear, the others ReLU."""
        top = len(self.dims) - 1
        out: list[torch.Tensor | None] = [None] * len(self.dims)
        h = self.from_z(z)
        out[top] = h = self._gate(F.relu(h), 0, y) if top > 0 else h
        for j, layer in enumerate(self.decoder):
            level = top - 1 - j
            if level < down_to:
                break
            h = layer(h)
            if level > 0:
                h = self._gate(F.relu(h), j + 1, y)
            out[level] = h
        return out

    # -- sampling and training -------------------------------------------------------------
    def sample_z(self, n: int, classes: torch.Tensor, gen: torch.Generator | None = None):
        """z for `n` samples and their classes, drawn uniformly from `classes`."""
        y = classes[torch.randint(len(classes), (n,), device=classes.device, generator=gen)]
        return self.z_for(y, gen), y

    def z_for(self, y: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z | y): the class's prior mode, or N(0, I) without per-class modes."""
        eps = torch.randn(len(y), self.z_dim, device=y.device, generator=gen)
        if not self.per_class_prior:
            return eps
        return self.prior_mean[y] + eps * (0.5 * self.prior_logvar[y]).exp()

    def loss(self, levels: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Sum over levels of the MSE reconstruction + KL(q(z|a_0) || p(z|y)) / dim(a_0)."""
        mu, logvar = self.to_z(self.encoder(levels[0])).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decode(z, y)
        rec = sum(F.mse_loss(r, a) for r, a in zip(recon, levels, strict=True))
        if self.per_class_prior:
            pm, plv = self.prior_mean[y], self.prior_logvar[y]
        else:
            pm, plv = torch.zeros_like(mu), torch.zeros_like(logvar)
        kl = 0.5 * (plv - logvar + (logvar.exp() + (mu - pm) ** 2) / plv.exp() - 1).sum(1)
        return rec + kl.mean() / self.dims[0]
