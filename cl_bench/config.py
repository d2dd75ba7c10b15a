"""Structured-config schemas: Hydra validates every composed config against them, so a
misspelled key or a value of the wrong type fails at compose time, before training.

Each yaml under conf/<group>/ extends one of these through its defaults list
(`- /schema/<group>/<kind>@_here_`), and holds only the values. Schemas live in their own
`schema/` groups so they do not show up as options of the groups they describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Scenario(Enum):
    class_il = "class_il"
    task_il = "task_il"
    domain_il = "domain_il"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


@dataclass
class DataConf:
    root: str | None = None
    download: bool = False


@dataclass
class SplitBenchmarkConf:
    _target_: str = "cl_bench.data.benchmarks.split_stream"
    name: str = MISSING
    dataset: str = MISSING
    n_tasks: int = 5
    class_order: list[int] | None = None
    shuffle_classes: bool = False
    class_seed: int = 0
    scenario: Scenario = Scenario.class_il
    augment: str = "none"


@dataclass
class PermutedBenchmarkConf:
    _target_: str = "cl_bench.data.benchmarks.permuted_stream"
    name: str = MISSING
    dataset: str = MISSING
    n_tasks: int = 10
    permute_first: bool = True
    permutation_seed: int = 0
    scenario: Scenario = Scenario.domain_il
    augment: str = "none"


@dataclass
class RotatedBenchmarkConf:
    _target_: str = "cl_bench.data.rotated.rotated_stream"
    name: str = MISSING
    dataset: str = MISSING
    angles: list[float] = field(default_factory=lambda: [0.0, 80.0, 160.0])
    scenario: Scenario = Scenario.domain_il
    augment: str = "none"


@dataclass
class FeatureBenchmarkConf(SplitBenchmarkConf):
    """A split benchmark on cached conv5 features (data/features.py)."""
    _target_: str = "cl_bench.data.features.feature_stream"
    weights: str = MISSING


@dataclass
class Conv5FrozenConf:
    _target_: str = "cl_bench.models.conv5.Conv5Frozen"
    name: str = "conv5_frozen"
    hidden: list[int] = field(default_factory=lambda: [2000, 2000])
    weights: str | None = None


@dataclass
class MLPConf:
    _target_: str = "cl_bench.models.mlp.MLP"
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [400, 400])
    head: str = "linear"  # linear | nmc (nearest class mean at prediction)


@dataclass
class ReducedResNetConf:
    _target_: str = "cl_bench.models.resnet.ReducedResNet18"
    name: str = "resnet18_reduced"
    nf: int = 20


@dataclass
class ResNetConf:
    _target_: str = "cl_bench.models.resnet.ResNet18"
    name: str = "resnet18"


@dataclass
class LoRAConf:
    rank: int = 0  # 0: off
    alpha: float | None = None  # update scale alpha / rank; null: alpha = rank


@dataclass
class MethodConf:
    _target_: str = MISSING
    name: str = MISSING
    # stability-gap remedies (cl_bench/methods/remedies.py); the defaults leave a method as is
    head_init: str = "random"  # random | class_mean
    freeze_old_rows: bool = False
    soft_targets: str = "none"  # none | dynamic
    soft_weight: float = 0.2
    lora: LoRAConf = field(default_factory=LoRAConf)


@dataclass
class ReplayMethodConf(MethodConf):
    replay_batch_size: int = 10


@dataclass
class LatentReplayConf(MethodConf):
    """generative_replay / internal_replay / plr (methods/latent_replay.py)."""
    replay_batch_size: int = 128
    z_dim: int = 100
    generator_lr: float = 0.001
    per_class_prior: bool = True
    gate_prop: float = 0.0
    distill: bool = True
    temperature: float = 2.0
    decode_to_level: bool = True
    targets: str = "from_injected_level"  # from_a0 | from_injected_level
    partition: str = "batch_split"  # batch_split | temporal
    save_samples: bool = True
    seed: int = 0


@dataclass
class InternalReplayConf(LatentReplayConf):
    replay_level: int = 0


@dataclass
class PLRConf(LatentReplayConf):
    rule: str = "cumulative_weights"  # uniform | cumulative_weights | total_weights | explicit
    frequencies: list[float] | None = None  # for rule=explicit: f_0 .. f_{L-1}


@dataclass
class MemoryConf:
    _target_: str = MISSING
    name: str = MISSING
    size: int = 0


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0


@dataclass
class BudgetConf:
    _target_: str = "cl_bench.budget.budget.Budget"
    batch_size: int = 10
    epochs: int | None = 1
    iters: int | None = None
    flops_per_task: float | None = None
    drop_last: bool = False


@dataclass
class EvalConf:
    every: int = 50  # iterations between continual evaluations; 0 turns them off
    probe_size: int = 200  # test samples per task in the continual-evaluation probe
    batch_size: int = 1000
    precision: str = "auto"  # auto | fp32 | bf16 (autocast) for the probe passes
    plot: bool = True  # write stability_gap.png when there are curves


@dataclass
class LoggerConf:
    name: str = "csv"
    train_every: int = 10  # iterations per train.csv row (loss averaged over them)
    console: bool = True
    project: str = "clbench"
    entity: str | None = None
    mode: str = "auto"  # auto: offline unless W&B is configured; online; offline; disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class ClbenchConf:
    benchmark: Any = MISSING
    model: Any = MISSING
    method: Any = MISSING
    memory: Any = MISSING
    optimizer: Any = MISSING
    budget: BudgetConf = MISSING
    eval: EvalConf = MISSING
    logger: LoggerConf = MISSING
    data: DataConf = field(default_factory=DataConf)
    seed: int = 0
    device: Device = Device.auto
    scenario: Scenario = MISSING
    deterministic: bool = False
    output_root: str = "outputs"
    skip_done: bool = False


SCHEMAS = {
    None: {"schema": ClbenchConf},
    "benchmark": {"schema_split": SplitBenchmarkConf, "schema_permuted": PermutedBenchmarkConf,
                  "schema_rotated": RotatedBenchmarkConf, "schema_features": FeatureBenchmarkConf},
    "model": {"schema_mlp": MLPConf, "schema_resnet18_reduced": ReducedResNetConf,
              "schema_resnet18": ResNetConf, "schema_conv5_frozen": Conv5FrozenConf},
    "method": {"schema_method": MethodConf, "schema_replay": ReplayMethodConf,
               "schema_latent_replay": LatentReplayConf,
               "schema_internal_replay": InternalReplayConf, "schema_plr": PLRConf},
    "memory": {"schema_memory": MemoryConf},
    "optimizer": {"schema_sgd": SGDConf, "schema_adam": AdamConf},
    "budget": {"schema_budget": BudgetConf},
    "eval": {"schema_eval": EvalConf},
    "logger": {"schema_logger": LoggerConf},
}


def register_schemas() -> None:
    from cl_bench.replay_schemas import register as register_replay_schemas

    cs = ConfigStore.instance()
    register_replay_schemas(cs)
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            if group is None:
                cs.store(name=name, node=node)
            else:
                cs.store(group=f"schema/{group}", name=name.removeprefix("schema_"), node=node)
