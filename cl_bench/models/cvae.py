"""Conditional VAE over a classifier's levels: the generator of generative replay (Shin et
al., 2017), internal replay / BI-R (van de Ven et al., 2020) and Progressive Latent Replay
(Pawlak et al., 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RECON_LOSSES = ("bce", "mse")


class LevelVAE(nn.Module):
    """VAE whose encoder reads a_0 and whose decoder mirrors the classifier in reverse.

    `dims` are the widths of a_0 .. a_{L-1}. The encoder is an MLP over a_0 with the
    classifier's hidden widths; `fromZ` maps z to a_{L-1}'s width and decoder layer j
    (j = 1 .. L-1) emits level L-1-j, so decoding stops as soon as the deepest level a
    sample needs is made. Only the levels in `recon_levels` are trained (DGR and internal
    replay: the replayed level alone; PLR: every level, as in its authors' code).

    Losses follow the reference code (van de Ven's `VAE.loss_function`): a feature level's
    reconstruction term is 0.5 x its mean squared error (unit-variance Gaussian, averaged
    over units, then over the batch); with `recon_loss="bce"` level 0 is raw pixels, the
    decoder's last layer is a sigmoid over [0, 1] pixels trained by binary cross-entropy
    (averaged over pixels), and `decode` maps it into the classifier's input space with
    `pixel_affine` (a, b): a_0 = a * pixel + b. The KL term is divided by `kl_divisor`
    (the number of input pixels in the reference). Prior: one learnable Gaussian mode per
    class (`per_class_prior`, BI-R's conditional replay; means and log-variances
    initialised N(0, 1) as in BI-R) or N(0, I) with unconditional sampling (DGR).
    `gate_prop` > 0 multiplies the decoder's hidden units by a fixed random per-class
    binary mask (BI-R's gating based on internal context). `extra_layer` gives the shape
    of the PLR authors' VAE: one more encoder layer of a_{L-1}'s width, and `fromZ` maps z
    to a hidden layer h of that width that is no level, then a layer h -> a_{L-1}.
    """

    def __init__(self, dims: list[int], n_classes: int, z_dim: int = 100,
                 per_class_prior: bool = True, gate_prop: float = 0.0, seed: int = 0,
                 recon_levels: list[int] | None = None, recon_loss: str = "mse",
                 pixel_affine: tuple[torch.Tensor, torch.Tensor] | None = None,
                 kl_divisor: float | None = None, extra_layer: bool = False):
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"method.recon_loss={recon_loss!r}: choose one of "
                             f"{list(RECON_LOSSES)}")
        if recon_loss == "bce" and pixel_affine is None:
            raise ValueError("method.recon_loss='bce' needs level 0 to be raw pixels; "
                             "use method.recon_loss=mse for features")
        self.dims = list(dims)
        self.z_dim = z_dim
        self.per_class_prior = per_class_prior
        self.recon_levels = sorted(set(range(len(dims)) if recon_levels is None else recon_levels))
        self.recon_loss = recon_loss
        self.kl_divisor = float(kl_divisor or dims[0])
        enc, width = [], dims[0]
        for h in dims[1:] + dims[-1:] * extra_layer:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.to_z = nn.Linear(width, 2 * z_dim)
        self.from_z = nn.Linear(z_dim, dims[-1])
        self.extra = nn.Linear(dims[-1], dims[-1]) if extra_layer else None  # h -> a_{L-1}
        # decoder[j] maps level L-1-j to level L-2-j
        self.decoder = nn.ModuleList(nn.Linear(dims[i], dims[i - 1])
                                     for i in range(len(dims) - 1, 0, -1))
        gen = torch.Generator().manual_seed(seed)
        n_modes = n_classes if per_class_prior else 0
        self.prior_mean = nn.Parameter(torch.randn(n_modes, z_dim, generator=gen))
        self.prior_logvar = nn.Parameter(torch.randn(n_modes, z_dim, generator=gen))
        self.gate_prop = gate_prop
        for i, units in enumerate(dims[:0:-1]):  # hidden decoder outputs: a_{L-1} .. a_1
            mask = (torch.rand(n_classes, units, generator=gen) >= gate_prop).float()
            self.register_buffer(f"gate{i}", mask)
        if extra_layer:  # drawn after the others: without it the masks stay as they were
            mask = (torch.rand(n_classes, dims[-1], generator=gen) >= gate_prop).float()
            self.register_buffer("gate_extra", mask)
        a, b = pixel_affine if pixel_affine is not None else (torch.ones(0), torch.zeros(0))
        self.register_buffer("pixel_scale", a.reshape(-1).float().clone())
        self.register_buffer("pixel_shift", b.reshape(-1).float().clone())

    # -- decoding --------------------------------------------------------------------------
    def _gate(self, h: torch.Tensor, i: int | str, y: torch.Tensor | None) -> torch.Tensor:
        if self.gate_prop <= 0 or y is None:
            return h
        return h * getattr(self, f"gate{i}")[y]

    def decode_raw(self, z: torch.Tensor, y: torch.Tensor | None = None,
                   down_to: int = 0) -> list[torch.Tensor | None]:
        """Levels [a_0 .. a_{L-1}] decoded from z, only as far down as level `down_to`
        (levels below it are None). Hidden levels are ReLU; level 0 is linear (the
        pixel logits under `recon_loss="bce"`)."""
        top = len(self.dims) - 1
        out: list[torch.Tensor | None] = [None] * len(self.dims)
        h = self.from_z(z)
        if self.extra is not None:
            h = self.extra(self._gate(F.relu(h), "_extra", y))
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

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None,
               down_to: int = 0) -> list[torch.Tensor | None]:
        """`decode_raw` with level 0 in the classifier's input space."""
        out = self.decode_raw(z, y, down_to)
        if self.recon_loss == "bce" and out[0] is not None:
            out[0] = torch.sigmoid(out[0]) * self.pixel_scale + self.pixel_shift
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

    def to_pixels(self, a0: torch.Tensor) -> torch.Tensor:
        """Level-0 inputs back to [0, 1] pixels (the BCE targets)."""
        return ((a0 - self.pixel_shift) / self.pixel_scale).clamp(0, 1)

    def level_loss(self, k: int, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if k == 0 and self.recon_loss == "bce":
            return F.binary_cross_entropy_with_logits(recon, self.to_pixels(target))
        return 0.5 * F.mse_loss(recon, target)

    def loss(self, levels: list[torch.Tensor | None], y: torch.Tensor) -> torch.Tensor:
        """Sum over `recon_levels` of the reconstruction terms + KL(q(z|a_0) || p(z|y)) /
        `kl_divisor`."""
        mu, logvar = self.to_z(self.encoder(levels[0])).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decode_raw(z, y, down_to=self.recon_levels[0])
        rec = sum(self.level_loss(k, recon[k], levels[k]) for k in self.recon_levels)
        if self.per_class_prior:
            pm, plv = self.prior_mean[y], self.prior_logvar[y]
        else:
            pm, plv = torch.zeros_like(mu), torch.zeros_like(logvar)
        kl = 0.5 * (plv - logvar + (logvar.exp() + (mu - pm) ** 2) / plv.exp() - 1).sum(1)
        return rec + kl.mean() / self.kl_divisor
