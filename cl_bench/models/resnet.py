"""ResNet-18 variants for 32x32 inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from cl_bench.models.pretrained import RUNNER_KEYS, PretrainConf, PretrainedModelConf
from cl_bench.schemas import defaults_from, schema


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@schema("model", "resnet18_reduced")
@dataclass
class ReducedResNetConf(PretrainedModelConf):
    _target_: str = "cl_bench.models.resnet.ReducedResNet18"
    name: str = "resnet18_reduced"
    nf: int = 20
    pretrain: PretrainConf = field(default_factory=lambda: PretrainConf(lr=0.002, epochs=8))


@defaults_from(ReducedResNetConf, skip=RUNNER_KEYS)  # the runner reads those
class ReducedResNet18(nn.Module):
    """ResNet-18 with `nf` base filters (nf=20: the reduced ResNet-18 of GEM,
    Lopez-Paz & Ranzato, 2017, used across CL papers), 3x3 stem, no max-pool."""

    def __init__(self, input_shape, n_classes: int, nf: int):
        super().__init__()
        if nf < 1:
            raise ValueError(f"model.nf={nf}: the stem width must be >= 1 (20 in the paper)")
        in_ch = input_shape[0]
        self.conv1 = nn.Conv2d(in_ch, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        stages, planes = [], nf
        for i, mult in enumerate((1, 2, 4, 8)):
            out = nf * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(planes, out, stride), BasicBlock(out, out, 1)))
            planes = out
        self.stages = nn.Sequential(*stages)
        self.feature_dim = planes
        self.head = nn.Linear(planes, n_classes)

    def features(self, x):
        out = self.stages(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (He et al., 2016) with the CIFAR stem: 3x3 stride-1 first
    conv and no max-pool."""

    def __init__(self, input_shape, n_classes: int):
        super().__init__()
        import torchvision  # here: importing it costs startup time for every other model

        net = torchvision.models.resnet18(num_classes=n_classes)
        net.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.backbone = net
        self.feature_dim = 512

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.head(self.backbone(x))
@schema("model", "resnet18")
@dataclass
class ResNetConf:
    _target_: str = "cl_bench.models.resnet.ResNet18"
    name: str = "resnet18"
