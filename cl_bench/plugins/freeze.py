"""SpFDE's progressive layer freezing."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.plugins.forgetting import at_step, fraction
from cl_bench.schemas import defaults_from, schema


def blocks(model: nn.Module) -> list[nn.Module]:
    """The parameterised top-level stages of `model` in forward order, head last: each
    child with parameters of a `features` Sequential (the MLP's Linear layers, conv5's
    extractor) or, for the ResNet-18s, the stem (first conv and its BN) and the four
    stages (`stages` or torchvision's `layer1..4`); then `head`."""
    body = getattr(model, "backbone", model)
    if isinstance(getattr(model, "features", None), nn.Sequential):
        parts = [m for m in model.features if next(m.parameters(), None) is not None]
    elif hasattr(body, "conv1") and hasattr(body, "bn1"):
        stages = (list(body.stages) if hasattr(body, "stages")
                  else [body.layer1, body.layer2, body.layer3, body.layer4])
        parts = [nn.ModuleList([body.conv1, body.bn1]), *stages]
    else:
        raise ValueError(f"plugins.freeze: no blocks known for model {type(model).__name__} "
                         "(MLP, conv5 and ResNet-18 models have them)")
    return [*parts, model.head]


@schema("plugin", "freeze")
@dataclass
class FreezeConf(PluginConf):
    _target_: str = "cl_bench.plugins.freeze.Freeze"
    blocks: int = 1  # blocks frozen from the input side (MLP: Linear layers; ResNet: stem, stages)
    start: float = 0.5  # fraction of the task's planned steps after which freezing starts
    # fraction of the task's steps between freezing one more block (null: all at once)
    every: float | None = None


@defaults_from(FreezeConf)
class Freeze(Plugin):
    """Progressive layer freezing of SpFDE (Yuan, Li et al., NeurIPS 2022), per task: after
    `start` (fraction of the task's planned steps) the first `blocks` blocks of the model
    (see `blocks`) stop training (`requires_grad_(False)`: a frozen prefix costs its forward
    only); with `every` (a fraction) one block freezes at `start` and one more every that
    many steps until `blocks` are. The head never freezes. Blocks thaw at the end of the
    task. Batch-norm statistics of frozen blocks keep updating."""

    needs = frozenset({"plain_model", "planned_steps"})

    def __init__(self, blocks: int, start: float, every: float | None):
        if blocks < 1:
            raise ValueError(f"plugins.freeze.blocks={blocks} must be >= 1")
        self.n_blocks = blocks
        self.start = fraction(start, "plugins.freeze.start")
        self.every = None if every is None else fraction(every, "plugins.freeze.every")
        self.frozen: list[nn.Parameter] = []  # the parameters this plugin froze
        self.n_frozen = self.step = 0
        self.first: int | None = None  # step after which freezing starts

    def setup(self, method):
        super().setup(method)
        self._check(method.model)

    def _check(self, model: nn.Module) -> list[nn.Module]:
        found = blocks(model)
        if self.n_blocks >= len(found):
            raise ValueError(f"plugins.freeze.blocks={self.n_blocks}: model "
                             f"{type(model).__name__} has {len(found) - 1} blocks below its "
                             "head, which never freezes")
        return found

    def before_task(self, task):
        self._thaw()
        self.step = 0
        self.blocks = self._check(self.method.model)
        self.first = None  # the task's planned steps are known from its first step on

    def after_step(self, batch):
        if self.first is None:
            steps = self.method.task_steps
            self.first = at_step(self.start, steps)
            self.gap = None if self.every is None else at_step(self.every, steps)
        self.step += 1
        if self.step < self.first or self.n_frozen == self.n_blocks:
            return
        due = self.n_blocks if self.gap is None else 1 + (self.step - self.first) // self.gap
        while self.n_frozen < min(due, self.n_blocks):
            self._freeze_next()

    def _freeze_next(self) -> None:
        for p in self.blocks[self.n_frozen].parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                p.grad = None
                self.frozen.append(p)
        self.n_frozen += 1

    def _thaw(self) -> None:
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen, self.n_frozen = [], 0

    def after_task(self, task):
        self._thaw()

    def state_dict(self):
        return {"n_frozen": self.n_frozen, "step": self.step}

    def load_state_dict(self, state):
        self._thaw()
        self.blocks = blocks(self.method.model)
        while self.n_frozen < state["n_frozen"]:
            self._freeze_next()
        self.step = state["step"]
