"""Builds the parts of a run from its config: stream, model, memory, plugins, method,
budget, evaluator (`build_parts`); `cl_bench.experiment` runs them."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cl_bench.budget.budget import Budget
from cl_bench.budget.flops import FlopCounter
from cl_bench.data.modes import blur, budget_overrides, check_stream, required_modes
from cl_bench.data.stream import TaskStream, carve_validation, shared_labels
from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.loggers.artifacts import Artifacts
from cl_bench.memory.base import Memory
from cl_bench.methods.base import Method
from cl_bench.metrics.evaluator import Evaluator
from cl_bench.models.pretrained import RUNNER_KEYS
from cl_bench.plugins.base import Plugin
from cl_bench.plugins.stability_gap import NMCHead
from cl_bench.weights import prepare as prepare_weights


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu or auto")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but this torch has no usable MPS (Apple GPU) backend; "
                          "use device=cpu or auto")
    return torch.device(requested)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs ~1 s
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def scenario_of(cfg: DictConfig) -> str:
    return str(cfg.scenario.value if hasattr(cfg.scenario, "value") else cfg.scenario)


def build_stream(cfg: DictConfig) -> TaskStream:
    """The benchmark's stream, with each task's validation split (`benchmark.val_fraction`
    of its training data, drawn with the run's seed) held out."""
    stream = instantiate_part(cfg.benchmark, ("scenario", "augment", "val_fraction"),
                              root=cfg.data.root, download=cfg.data.download)
    stream = carve_validation(stream, cfg.benchmark.get("val_fraction", 0.0), cfg.seed)
    scenario = scenario_of(cfg)
    if scenario == "domain_il" and "class_il" in stream.scenarios:  # split -> one shared head
        stream = shared_labels(stream)
    if scenario not in stream.scenarios:
        shared = cfg.benchmark.get("labels") == "shared"  # permuted MNIST: 10 labels, every task
        raise ValueError(
            f"scenario={scenario} is not available on benchmark={cfg.benchmark.name}; "
            f"it supports {list(stream.scenarios)}"
            + (": run it with benchmark.labels=per_task for class_il and task_il (each task "
               "its own 10 classes)" if shared else "")
        )
    return stream


@dataclass
class Parts:
    """What a run is made of, built from its config by `build_parts`."""

    stream: TaskStream
    device: torch.device
    method: Method
    memory: Memory
    budget: Budget
    counter: FlopCounter
    evaluator: Evaluator
    stream_mode: DictConfig


def instantiate_part(node: DictConfig, runner_keys: tuple[str, ...] = ("name",), **kwargs):
    """`instantiate(node)` without the keys the runner reads itself (`name` identifies
    the option; a benchmark's `scenario` and `augment` configure the runner), so the
    part's constructor sees exactly its own options and rejects anything else."""
    own = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
           if k not in runner_keys}
    return instantiate(own, **kwargs)


def build_model(model_cfg: DictConfig, input_shape, n_classes: int) -> nn.Module:
    """The model of `model_cfg` (random weights; `prepare_weights` loads `model.weights` of
    the models with a `pretrain` node; conv5_frozen reads its own `weights` file)."""
    keys = RUNNER_KEYS if "pretrain" in model_cfg else ("name",)
    return instantiate_part(model_cfg, keys, input_shape=input_shape, n_classes=n_classes)


def build_memory(cfg: DictConfig, device, run_dir: Path) -> Memory:
    """The memory of `cfg`; one that keeps files (carousel) gets the run directory."""
    stores_files = get_class(cfg.memory._target_).stores_files
    return instantiate_part(cfg.memory, device=device, seed=cfg.seed,
                            **({"run_dir": str(run_dir)} if stores_files else {}))


def build_plugins(cfg: DictConfig, model: nn.Module) -> list[Plugin]:
    """The plugins of `cfg.plugins`, in config order, each knowing its config name;
    `model.head=nmc` (mlp) is the alias of `plugin=[nmc]`, appended last."""
    plugins = []
    for name, node in cfg.plugins.items():
        plugin = instantiate_part(node, ())
        plugin.name = name
        plugins.append(plugin)
    if getattr(model, "head_kind", "linear") == "nmc" and "nmc" not in cfg.plugins:
        plugin = NMCHead()
        plugin.name = "nmc"
        plugins.append(plugin)
    return plugins


def check_method_scenario(cfg: DictConfig, stream: TaskStream) -> None:
    """A method or plugin that cannot run in the run's scenario is refused naming a scenario
    they all can, and what the benchmark needs to offer it (permuted MNIST: per-task labels)."""
    scenario = scenario_of(cfg)
    method = get_class(cfg.method._target_)
    plugins = {name: get_class(node._target_) for name, node in cfg.get("plugins", {}).items()}
    common = [s for s in method.supported_scenarios
              if all(s in p.supported_scenarios for p in plugins.values())]
    if scenario in common or not common:  # none in common: the contract's check refuses it
        return
    alt = next((s for s in common if s in stream.scenarios), common[0])
    fix = f"scenario={alt}"
    if alt not in stream.scenarios and cfg.benchmark.get("labels") == "shared":
        fix += " benchmark.labels=per_task"
    if scenario not in method.supported_scenarios:
        why = (f"method={cfg.method.name} does not support scenario={scenario}; it supports "
               f"{list(method.supported_scenarios)}")
    else:
        name, plugin = next((n, p) for n, p in plugins.items()
                            if scenario not in p.supported_scenarios)
        why = (f"method={cfg.method.name} cannot take plugin {name} in scenario={scenario}: "
               f"the plugin supports {list(plugin.supported_scenarios)}")
    raise ConfigError(f"{why}: run it with {fix}")


def build_parts(cfg: DictConfig, run_dir: Path, stream: TaskStream | None = None) -> Parts:
    """The stream (unless given: `clbench-tune` builds one per attempt over one stream),
    model (inside the method), memory, plugins, method, budget with its FLOP counter, and
    evaluator of `cfg`, in an order that fixes their RNG draws. The stream mode
    (`cfg.stream`) blurs the tasks' training sets, sizes a single-pass budget and is
    checked against what the method and plugins support."""
    if cfg.eval.every < 0:
        raise ValueError(f"eval.every must be >= 0 (0 turns continual evaluation off), "
                         f"got {cfg.eval.every}")
    check_stream(cfg.stream)
    device = resolve_device(str(getattr(cfg.device, "value", cfg.device)))
    stream = stream if stream is not None else build_stream(cfg)
    check_method_scenario(cfg, stream)
    stream = blur(stream, cfg.stream.width, cfg.seed)
    preprocess = Preprocess(stream.mean, stream.std, device, cfg.benchmark.augment)
    class_mask = stream.class_mask(device)
    model = build_model(cfg.model, stream.input_shape, stream.n_classes).to(device)
    weights = prepare_weights(
        model, cfg.model, build=lambda n: build_model(cfg.model, stream.input_shape, n),
        data_root=cfg.data.root, cache_root=cfg.cache.root, device=device)
    if weights:
        stream = replace(stream, provenance={**stream.provenance, **weights})
    budget = instantiate_part(cfg.budget, **budget_overrides(cfg.stream, cfg.budget))
    budget.check_tasks(len(stream))
    memory = build_memory(cfg, device, run_dir)
    plugins = build_plugins(cfg, model)
    method = instantiate_part(
        cfg.method, (), model=model, optimizer=instantiate(cfg.optimizer),
        memory=memory, preprocess=preprocess, class_mask=class_mask, scenario=scenario_of(cfg),
        counter=budget.counter, plugins=plugins,
    )
    method.check_stream(required_modes(cfg.stream), cfg.stream.name)
    method.check_budget(budget.match is None)
    method.ctx.artifacts = Artifacts(run_dir)
    evaluator = Evaluator(stream, preprocess, class_mask, budget.counter, device,
                          probe_size=cfg.eval.probe_size, batch_size=cfg.eval.batch_size,
                          seed=cfg.seed, precision=cfg.eval.precision)
    return Parts(stream, device, method, memory, budget, budget.counter, evaluator, cfg.stream)
