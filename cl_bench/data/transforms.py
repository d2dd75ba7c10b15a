"""Batched preprocessing on the run's device: uint8 -> normalised float, optional augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Preprocess:
    """Turns a uint8 batch (N, C, H, W) into a normalised float batch.

    `augment="crop_flip"` applies a random crop after zero padding (`pad` pixels) and a
    random horizontal flip to the whole batch with tensor ops, no per-sample Python.
    """

    def __init__(self, mean, std, device, augment: str = "none", pad: int = 4):
        if augment not in ("none", "crop_flip"):
            raise ValueError(f"benchmark.augment={augment!r}: choose 'none' or 'crop_flip'")
        std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std == x * scale - shift
        self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) / std
        self.augment = augment
        self.pad = pad

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = x.float().mul_(self.scale).sub_(self.shift)
        if train and self.augment == "crop_flip":
            x = random_crop_flip(x, self.pad)
        return x


def random_crop_flip(x: torch.Tensor, pad: int) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = dx + torch.arange(w, device=x.device)
    flip = torch.rand(n, 1, device=x.device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]
