"""The schema keys of a pretrained backbone (`model.weights`, `model.frozen`,
`model.pretrain`), which model schemas inherit. What they mean, and the code that loads or
makes the weights, live in `cl_bench.weights`; the `clbench-pretrain` command in
`cl_bench.pretrain`."""

from __future__ import annotations

from dataclasses import dataclass, field

# model-config keys the runner reads itself (not constructor arguments)
RUNNER_KEYS = ("name", "weights", "frozen", "pretrain")


@dataclass
class PretrainConf:
    """How `model.weights=pretrain` makes its weights (supervised, AdamW, cosine schedule
    with linear warm-up, the run's batched augmentation)."""
    dataset: str = "cifar100"
    classes: list[int] = field(default_factory=lambda: list(range(50, 100)))
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.001
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of the steps
    label_smoothing: float = 0.1
    augment: str = "crop_flip"
    seed: int = 0
    auto: bool = True  # pretrain when the cache has no weights (false: stop and say how)


@dataclass
class PretrainedModelConf:
    """The keys of `model.weights` a model schema inherits (the runner reads them)."""
    weights: str | None = None  # null | pretrain | timm:<name> | PATH
    frozen: bool = False  # freeze everything but the head (a linear probe)
    # model.weights=pretrain: supervised pretraining on a disjoint class set
    pretrain: PretrainConf = field(default_factory=PretrainConf)
