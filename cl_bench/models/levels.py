"""Feature levels of a classifier. `LevelView`: a (possibly frozen) extractor followed by
trainable layers h_1 .. h_L whose inputs a_0 .. a_{L-1} can be read and into which a batch
can be injected (the multi-level classifier of Progressive Latent Replay, Pawlak et al.,
2022). `default_level_names`/`capture`: the outputs of named intermediate modules (conv
blocks, stages, hidden layers) read during a forward, for feature distillation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import torch
from torch import nn


class LevelView:
    """Splits `model.features` (an `nn.Sequential`) at its `nn.Linear` layers.

    Everything before the first Linear is the extractor E, so `a_0 = E(x)`; each Linear
    with the modules up to the next Linear is a block, `a_l = block_l(a_{l-1})`; the
    model's `head` is the last layer h_L. Works for `MLP` (E = Flatten) and for
    `Conv5Frozen` (E = the frozen conv stack and Flatten). Holds no state of its own.
    """

    def __init__(self, model: nn.Module):
        children = list(getattr(model, "features", nn.Sequential()))
        linear = [i for i, m in enumerate(children) if isinstance(m, nn.Linear)]
        if not hasattr(model, "head") or not isinstance(model.head, nn.Linear):
            raise ValueError(
                f"model {type(model).__name__} has no Linear `head`; generative/latent replay "
                "needs a layered classifier such as model=mlp or model=conv5_frozen"
            )
        first = linear[0] if linear else len(children)
        self.model = model
        self.extractor = nn.Sequential(*children[:first])
        bounds = [*linear, len(children)]
        self.blocks = [nn.Sequential(*children[a:b]) for a, b in pairwise(bounds)]
        self.layers = [*(b[0] for b in self.blocks), model.head]  # h_1 .. h_L
        self.dims = [layer.in_features for layer in self.layers]  # widths of a_0 .. a_{L-1}

    @property
    def n_levels(self) -> int:
        return len(self.layers)

    def param_counts(self) -> list[int]:
        """Parameters of h_1 .. h_L (the w_k of PLR's frequency rules)."""
        return [sum(p.numel() for p in layer.parameters()) for layer in self.layers]

    def levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All activations a_0 .. a_{L-1} and the logits of a preprocessed batch."""
        acts = [self.extractor(x)]
        for block in self.blocks:
            acts.append(block(acts[-1]))
        return acts, self.model.head(acts[-1])

    def forward_from(self, a: torch.Tensor, level: int) -> torch.Tensor:
        """Logits of a batch injected at level `level` (fed to h_{level+1} and above)."""
        for block in self.blocks[level:]:
            a = block(a)
        return self.model.head(a)


def default_level_names(model: nn.Module) -> list[str] | None:
    """Names (as in `model.named_modules()`) of the modules whose outputs are a model's
    feature levels, for the backbones clbench ships: `MLP` the activation of each hidden
    layer, `ConvNet` each conv block's output (after its max-pool), `ReducedResNet18` its
    four stages, `ResNet18` layer1-4. None for any other model."""
    from cl_bench.models.convnet import ConvNet
    from cl_bench.models.mlp import MLP
    from cl_bench.models.resnet import ReducedResNet18, ResNet18

    if isinstance(model, (MLP, ConvNet)):
        kind = nn.ReLU if isinstance(model, MLP) else nn.MaxPool2d
        return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, kind)]
    if isinstance(model, ReducedResNet18):
        return [f"stages.{i}" for i in range(len(model.stages))]
    if isinstance(model, ResNet18):
        return [f"backbone.layer{i}" for i in range(1, 5)]
    return None


def level_modules(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The modules of `model` named `names` (a KeyError names the first one missing)."""
    modules = dict(model.named_modules())
    return [modules[name] for name in names]


@contextmanager
def capture(modules: list[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Within the context, the outputs of `modules` on the latest forward that reached
    them (temporary forward hooks; numerics and FLOP counting unchanged)."""
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def keep(i):
        return lambda module, args, output: outputs.__setitem__(i, output)

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
