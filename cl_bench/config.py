"""Schemas of the runner's own settings (the top-level config, optimisers, evaluation,
logging) and the registration of every schema (`cl_bench.schemas`): the parts' schemas
live next to the classes they configure."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from cl_bench.schemas import SCHEMAS, Scenario, schema


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


@dataclass
class DataConf:
    root: str | None = None
    download: bool = False


@schema("optimizer", "sgd")
@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0


@schema("optimizer", "adam")
@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0


@schema("eval", "eval")
@dataclass
class EvalConf:
    every: int = 50  # iterations between continual evaluations; 0 turns them off
    probe_size: int = 200  # test samples per task in the continual-evaluation probe
    batch_size: int = 1000
    precision: str = "auto"  # auto | fp32 | bf16 (autocast) for the probe passes
    plot: bool = True  # write stability_gap.png when there are curves


@schema("logger", "logger")
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
    budget: Any = MISSING
    plugins: dict[str, Any] = field(default_factory=dict)  # plugin=[...] places them here
    tune: dict[str, Any] = field(default_factory=dict)  # clbench-tune's settings (cl_bench/tune.py)
    eval: EvalConf = MISSING
    logger: LoggerConf = MISSING
    data: DataConf = field(default_factory=DataConf)
    seed: int = 0
    device: Device = Device.auto
    scenario: Scenario = MISSING
    deterministic: bool = False
    output_root: str = "outputs"
    skip_done: bool = False


# packages whose modules define schemas next to their classes (`@schema(group, name)`)
SCHEMA_PACKAGES = ("cl_bench.data", "cl_bench.models", "cl_bench.methods", "cl_bench.memory",
                   "cl_bench.plugins", "cl_bench.budget")


def register_schemas() -> None:
    """Import every module of SCHEMA_PACKAGES and store each schema it registered."""
    for package in SCHEMA_PACKAGES:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{info.name}")
    cs = ConfigStore.instance()
    cs.store(name="schema", node=ClbenchConf)
    for (group, name), node in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=node)
