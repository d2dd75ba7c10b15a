"""Schemas of the runner's own settings (the top-level config, optimisers, evaluation,
logging) and the registration of every schema (`cl_bench.schemas`): the parts' schemas
live next to the classes they configure."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cl_bench.errors import ConfigError
from cl_bench.paths import CONF_DIR
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


@dataclass
class WeightsConf:
    root: str | None = None  # pretrained weights: <root>/conv5_cifar10/conv5_cifar10.npz


@dataclass
class CacheConf:
    root: str = "~/.cache/clbench"  # derived files (cached features); never under data.root


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
    plot: bool = False  # write stability_gap.png at the end of a run with curves (~0.5 s)


@schema("logger", "logger")
@dataclass
class LoggerConf:
    name: str = "csv"
    train_every: int = 10  # iterations per train.csv row (loss averaged over them)
    console: bool = True
    project: str = "clbench"
    entity: str | None = None
    mode: str = "auto"  # auto: offline unless W&B is configured; online; offline; disabled
    init_timeout: float = 15.0  # seconds W&B may take to start before logging offline instead
    group: str | None = None  # default: the sweep directory name in multirun
    tags: list[str] = field(default_factory=list)


@dataclass
class CheckpointConf:
    """Checkpoints inside a task (one is always written at each task's end): a preempted or
    killed run resumed with skip_done=true redoes at most this much of its task, and ends
    bit-identical to an uninterrupted run. Written at the first train-log step
    (logger.train_every) after `every_minutes` of training or `every_steps` steps; null
    turns either off."""

    every_minutes: float | None = 5.0
    every_steps: int | None = None


@dataclass
class ClbenchConf:
    benchmark: Any = MISSING
    model: Any = MISSING
    method: Any = MISSING
    memory: Any = MISSING
    optimizer: Any = MISSING
    budget: Any = MISSING
    stream: Any = MISSING  # stream mode (cl_bench/data/modes.py)
    plugins: dict[str, Any] = field(default_factory=dict)  # plugin=[...] places them here
    tune: dict[str, Any] = field(default_factory=dict)  # clbench-tune's settings (cl_bench/tune.py)
    eval: EvalConf = MISSING
    logger: LoggerConf = MISSING
    data: DataConf = field(default_factory=DataConf)
    weights: WeightsConf = field(default_factory=WeightsConf)
    cache: CacheConf = field(default_factory=CacheConf)
    seed: int = 0
    device: Device = Device.auto
    scenario: Scenario = MISSING
    deterministic: bool = False
    output_root: str = "outputs"
    skip_done: bool = False
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    threads: int | None = None  # torch's intra-op threads; null: torch's choice (summary: threads)
    protocol: str = "paper"  # paper | cpu: the size of the published protocols
    pair: str | None = None  # the published protocol applied (set by its preset)
    # the optimizer preset (conf/optimizer/) the method preset's values were tuned with, set
    # by the preset; the defaults choose it when the command line names no optimizer=
    tuned_optimizer: str | None = None


def pairs() -> list[str]:
    """The published protocols: the presets of conf/experiment/ that set `pair`, each named
    <benchmark>_<model>_<method> and applied to that combination without `experiment=`."""
    return sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml")
                  if "\npair: " in p.read_text())


def tuned_optimizer(method: str) -> str | None:
    """The optimizer preset (conf/optimizer/) that conf/method/<method>.yaml says its values
    were tuned with (its `tuned_optimizer`), or None."""
    path = Path(CONF_DIR, "method", f"{method}.yaml")
    return OmegaConf.load(path).get("tuned_optimizer") if path.is_file() else None


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


def check_config(cfg: DictConfig) -> None:
    """Fails naming a key that no schema declares, a mandatory value left unset (`???`),
    or a runner setting of this module that makes no sense (a negative learning rate).

    Hydra rejects a misspelled key (`budget.epoch=2`) but accepts it when added with `+`
    (`+budget.epoch=2`, which Hydra's own error message suggests), and nothing would read
    it; a value left `???` would fail later inside the part, without its full key."""
    unknown = []

    def walk(node: DictConfig, prefix: str) -> None:
        kind = OmegaConf.get_type(node)
        known = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) \
            else None
        for key in node:
            if prefix == "" and key == "hydra":
                continue
            if known is not None and key not in known:
                unknown.append((f"{prefix}{key}", prefix[:-1], sorted(known)))
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not OmegaConf.is_missing(node, key):
                walk(child, f"{prefix}{key}.")

    walk(cfg, "")
    if unknown:
        key, parent, known = unknown[0]
        options = ", ".join(k for k in known if not k.startswith("_"))
        raise ConfigError(f"{key} is not a key of {parent or 'the config'} (its keys: "
                          f"{options}); check the spelling and drop the key or its +")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value (??? in the config): set it, "
                          f"e.g. {missing[0]}=VALUE")
    if cfg.get("protocol", "paper") != "paper" and cfg.get("pair") is None:
        raise ConfigError(
            f"protocol={cfg.protocol} sizes the published protocols (conf/experiment/), and "
            f"benchmark={cfg.benchmark.name} model={cfg.model.name} method={cfg.method.name} "
            f"has none (there are {', '.join(pairs())}, named benchmark_model_method); "
            "drop protocol= or choose one of those")
    for key in ("lr", "momentum", "weight_decay"):
        value = cfg.optimizer.get(key)
        if value is not None and value < 0:
            raise ConfigError(f"optimizer.{key} must be >= 0, got {value}")
    betas = cfg.optimizer.get("betas")
    if betas is not None and not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"optimizer.betas must lie in [0, 1), got {list(betas)}")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed must be in 0..2**32-1 (numpy's range), got {cfg.seed}")
    if cfg.logger.train_every < 1:
        raise ConfigError(f"logger.train_every must be >= 1 (iterations per train.csv row), "
                          f"got {cfg.logger.train_every}")
