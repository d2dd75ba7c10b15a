"""A narrow conv net without BatchNorm for 32x32 inputs: the CPU-sized backbone of the
parameter-isolation methods (per-task masks need no per-task normalisation statistics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from cl_bench.schemas import defaults_from, schema


@schema("model", "convnet")
@dataclass
class ConvNetConf:
    _target_: str = "cl_bench.models.convnet.ConvNet"
    name: str = "convnet"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    hidden: int = 256


@defaults_from(ConvNetConf)
class ConvNet(nn.Module):
    """[Conv3x3 -> ReLU -> MaxPool2] per entry of `channels`, then Linear(`hidden`) -> ReLU
    -> Linear head; the small conv nets of the SupSup/WSN/HAT CIFAR experiments, narrowed
    (default 32-64-128, 256 hidden: about 11 MMAC per 32x32 image)."""

    def __init__(self, input_shape, n_classes: int, channels, hidden: int):
        super().__init__()
        if not channels or any(c < 1 for c in channels) or hidden < 1:
            raise ValueError(f"model.channels={list(channels)} and model.hidden={hidden} "
                             "must be non-empty and positive")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"model.channels: {len(channels)} poolings need inputs of at "
                             f"least {2 ** len(channels)} pixels, got {input_shape}")
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, n_classes)
        self.feature_dim = hidden

    def forward(self, x):
        return self.head(self.features(x))
