"""The frozen 5-layer conv extractor of the internal-replay protocol (van de Ven et al.,
2020; Pawlak et al., 2022) with trainable fully connected layers on top."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cl_bench.errors import DamagedFile
from cl_bench.schemas import defaults_from, schema
from cl_bench.weightfiles import CONV5, conv5_rebuild, read_npz

CHANNELS = [(3, 16, 1), (16, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 2)]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def conv5_extractor() -> nn.Sequential:
    """conv1..conv5 (3x3, no bias) -> BN -> ReLU; 3x32x32 -> 256x2x2 -> 1024 features."""
    layers: list[nn.Module] = []
    for cin, cout, stride in CHANNELS:
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Flatten())


# where `benchmark.weights` and `model.weights` look by default, under `weights.root`
DEFAULT_WEIGHTS = "conv5_cifar10/conv5_cifar10.npz"


def weights_file(path: str | Path, key: str) -> Path:
    """`path` (as the config gave it, `~` expanded, `..` resolved) when it is a file; else
    fails naming the config key `key`, the path tried and the ways to get one."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}={path} does not exist: the frozen conv5 extractor (pretrained on "
            f"CIFAR-10) is read from there. {key} defaults to <weights.root>/{DEFAULT_WEIGHTS}, "
            "and weights.root to $CLBENCH_WEIGHTS, else models/ beside data.root. Fix: set "
            f"CLBENCH_WEIGHTS (or weights.root=DIR) to the folder that holds {DEFAULT_WEIGHTS}, "
            f"or pass {key}=PATH; to make the file, run `python scripts/pretrain_extractor.py "
            f"--out {path}` (trains on the CIFAR-10 under data.root).")
    return path


def load_conv5(extractor: nn.Sequential, path: str | Path, key: str = "model.weights") -> str:
    """Loads the `conv{i}.*` arrays of a conv5 `.npz` (see the pretrain script); returns
    the file's sha256 (hex). `key` is the config key that named the file, for the error
    message."""
    path = weights_file(path, key)
    names = [f"conv{i + 1}.{a}" for i in range(5)
             for a in ("weight", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")]
    arrays = read_npz(path, key, names, CONV5, conv5_rebuild(path))
    for i in range(5):
        conv, bn = extractor[3 * i], extractor[3 * i + 1]
        p = f"conv{i + 1}."
        for target, name in ((conv.weight.data, "weight"), (bn.weight.data, "bn_weight"),
                             (bn.bias.data, "bn_bias"), (bn.running_mean, "bn_running_mean"),
                             (bn.running_var, "bn_running_var")):
            if arrays[p + name].shape != tuple(target.shape):
                raise DamagedFile(f"{key}={path}: array {p + name} has shape "
                                  f"{arrays[p + name].shape}, the extractor's is "
                                  f"{tuple(target.shape)}: it is not {CONV5}. Fix: "
                                  f"{conv5_rebuild(path)}")
            target.copy_(torch.from_numpy(arrays[p + name]))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_conv5(extractor: nn.Sequential, head: nn.Linear, path: str | Path) -> None:
    arrays = {}
    for i in range(5):
        conv, bn = extractor[3 * i], extractor[3 * i + 1]
        p = f"conv{i + 1}."
        arrays.update({p + "weight": conv.weight, p + "bn_weight": bn.weight,
                       p + "bn_bias": bn.bias, p + "bn_running_mean": bn.running_mean,
                       p + "bn_running_var": bn.running_var})
    arrays.update({"head.weight": head.weight, "head.bias": head.bias})
    np.savez(path, **{k: v.detach().cpu().float().numpy() for k, v in arrays.items()})


@schema("model", "conv5_frozen")
@dataclass
class Conv5FrozenConf:
    _target_: str = "cl_bench.models.conv5.Conv5Frozen"
    name: str = "conv5_frozen"
    hidden: list[int] = field(default_factory=lambda: [2000, 2000])
    weights: str | None = "${weights.root}/" + DEFAULT_WEIGHTS


@defaults_from(Conv5FrozenConf)
class Conv5Frozen(nn.Module):
    """Frozen conv5 extractor (weights from `weights`, kept in eval mode) -> trainable
    [Linear -> ReLU] x len(hidden) -> Linear head: BI-R's 1024-2000-2000-100 classifier."""

    def __init__(self, input_shape, n_classes: int, hidden,
                 weights: str | None = None):
        super().__init__()
        if tuple(input_shape) != (3, 32, 32):
            raise ValueError(f"model=conv5_frozen needs 3x32x32 inputs, got {tuple(input_shape)}")
        if any(h < 1 for h in hidden):
            raise ValueError(f"model.hidden={list(hidden)}: every layer width must be >= 1")
        extractor = conv5_extractor()
        if weights is None:
            raise ValueError("model=conv5_frozen needs model.weights=PATH (a conv5 .npz, "
                             "see scripts/pretrain_extractor.py)")
        load_conv5(extractor, weights)
        extractor.requires_grad_(False)
        layers: list[nn.Module] = [extractor]
        width = 1024
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features[0].eval()  # frozen BN statistics
        return self

    def forward(self, x):
        return self.head(self.features(x))
