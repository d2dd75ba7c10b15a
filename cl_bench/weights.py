"""Pretrained backbones, the runner's side of `cl_bench.models.pretrained`'s keys:
`model.weights` says where a model's weights come from.

- `null`: random initialisation.
- `pretrain`: a backbone clbench pretrains itself on a disjoint part of the data
  (`model.pretrain`: by default CIFAR-100's classes 50-99, so that the continual stream can
  be the other 50, the "B50" protocol). The weights are cached under `cache.root`/backbones,
  keyed by the model's architecture, the pretraining settings and a digest of the data, and
  reused by every later run; when absent the run pretrains them first (progress bar with
  ETA), or with `model.pretrain.auto=false` stops naming the `clbench-pretrain` command.
- `timm:<name>`: the checkpoint of timm model `<name>`, fetched and cached by timm's own
  loader (the Hugging Face hub cache; offline with `HF_HUB_OFFLINE=1` once cached). The
  model's shape (patch, dim, depth, heads, `resize`) must match the checkpoint's.
- a path: a state dict saved with `torch.save` (or a `.safetensors` file).

The classification head is never loaded (its classes are the pretraining task's);
`model.frozen=true` then freezes everything but the head (the linear-probe baseline).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cl_bench.errors import ConfigError, DamagedFile, UserError
from cl_bench.models.pretrained import RUNNER_KEYS
from cl_bench.weightfiles import read_state

CACHE_VERSION = 1


class WeightsMissing(UserError):
    """The self-pretrained weights are not cached and `model.pretrain.auto=false`."""


def _arch(model_cfg: DictConfig) -> dict:
    own = OmegaConf.to_container(model_cfg, resolve=True)
    return {k: v for k, v in own.items() if k == "name" or k not in RUNNER_KEYS}


def _pretrain_settings(model_cfg: DictConfig) -> dict:
    settings = OmegaConf.to_container(model_cfg.pretrain, resolve=True)
    settings.pop("auto", None)
    return settings


def cache_file(model_cfg: DictConfig, cache_root: str, data_sha: str) -> Path:
    """Where the self-pretrained weights of `model_cfg` on data with digest `data_sha` live."""
    key = json.dumps({"arch": _arch(model_cfg), "pretrain": _pretrain_settings(model_cfg),
                      "data": data_sha, "version": CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_root).expanduser() / "backbones" / f"{model_cfg.name}-{digest}.pt"


def load_backbone(model: nn.Module, state: dict, source: str) -> None:
    """Loads `state` into `model` except its head; fails naming what does not fit."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing = sorted(k for k in own if not k.startswith("head.") and k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("other shape", wrong)) if keys)
        raise ConfigError(f"model.weights={source} does not fit model={type(model).__name__} "
                          f"({detail}); set the model's shape keys (model.patch, model.dim, "
                          "model.depth, model.heads, model.resize, model.nf) to the "
                          "checkpoint's")
    model.load_state_dict(state, strict=False)


def timm_state(name: str) -> dict:
    """The state dict of timm's pretrained `name`, through timm's loader and its cache."""
    try:
        import timm
    except ImportError as err:
        raise ConfigError("model.weights=timm:... needs timm: pip install timm") from err
    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as err:  # unknown name, no network and nothing cached, ...
        raise ConfigError(f"model.weights=timm:{name} could not be loaded ({err}); check the "
                          "name (timm.list_pretrained()), or fetch it once where a network "
                          "is reachable into the Hugging Face cache (HF_HOME) and set "
                          "HF_HUB_OFFLINE=1") from err
    return net.state_dict()


def file_state(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.weights={path}: no such file; give null, pretrain, "
                          "timm:<name> or the path of a saved state dict")
    state = read_state(p, "model.weights", "save the model's state_dict again (torch.save(model."
                       "state_dict(), PATH)), or use model.weights=pretrain (`clbench-pretrain "
                       "model=<this model>` makes it)")
    return state.get("state_dict", state)


def prepare(model: nn.Module, model_cfg: DictConfig, *, build: Callable[[int], nn.Module],
            data_root: str | None, cache_root: str, device: torch.device) -> dict:
    """Loads `model.weights` into `model` and applies `model.frozen`; returns what to put
    in the run's summary. `build(n_classes)` makes a fresh model of the same config (the
    pretraining network)."""
    if "pretrain" not in model_cfg:  # e.g. conv5_frozen, which loads its own file
        return {}
    spec = model_cfg.get("weights")
    info: dict = {}
    if spec == "pretrain":
        state, info = self_pretrained(model_cfg, build=build, data_root=data_root,
                                      cache_root=cache_root, device=device)
        load_backbone(model, state, spec)
    elif str(spec).startswith("timm:"):
        load_backbone(model, timm_state(str(spec)[5:]), spec)
        info = {"weights": spec}
    elif spec is not None:
        load_backbone(model, file_state(str(spec)), spec)
        info = {"weights": str(spec)}
    if model_cfg.get("frozen", False):
        freeze_backbone(model)
    return info


def freeze_backbone(model: nn.Module) -> None:
    """Everything but `model.head` stops training; BatchNorm layers become torchvision's
    `FrozenBatchNorm2d` (their statistics stay as loaded, in training too)."""
    model.requires_grad_(False)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            from torchvision.ops import FrozenBatchNorm2d  # here: torchvision is slow to import

            frozen = FrozenBatchNorm2d(m.num_features, eps=m.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(m, key).detach())
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, frozen)
    model.head.requires_grad_(True)


def self_pretrained(model_cfg: DictConfig, *, build, data_root, cache_root, device):
    """The cached self-pretrained weights, made first when absent (see the module doc)."""
    from cl_bench.data.datasets import load_dataset
    from cl_bench.data.features import _write, data_digest

    p = model_cfg.pretrain
    data = load_dataset(p.dataset, data_root)
    data_sha = data_digest(data)
    path = cache_file(model_cfg, cache_root, data_sha)
    if path.is_file():
        saved = read_state(path, "model.weights=pretrain: its cached file", (
            f"remove it; `clbench-pretrain model={model_cfg.name}` with this run's model.* "
            "overrides makes it again (the run does so itself unless model.pretrain.auto=false)"))
        if not isinstance(saved.get("state_dict"), dict) or "info" not in saved:
            raise DamagedFile(f"model.weights=pretrain: the cached file {path} is not a "
                              f"clbench backbone cache; remove it and rerun "
                              f"`clbench-pretrain model={model_cfg.name}`")
        return saved["state_dict"], {**saved["info"], "weights_cache": str(path),
                                     "weights_cache_hit": True}
    if not p.auto:
        raise WeightsMissing(
            f"model.weights=pretrain: no cached weights at {path}. Make them with "
            f"`clbench-pretrain model={model_cfg.name}` and the same model.* overrides as "
            "this run (or drop model.pretrain.auto=false to pretrain inside the run)")
    state, info = pretrain(data, p, build=build, device=device, label=model_cfg.name)
    info["data_sha256"] = data_sha
    try:
        _write(path, {"state_dict": state, "info": info})
    except OSError as err:
        print(f"warning: the pretrained weights could not be cached in {path} ({err}); set "
              "cache.root to a folder you can write", file=sys.stderr)
    return state, {**info, "weights_cache": str(path), "weights_cache_hit": False}


def pretrain(data, p, *, build, device, label: str = "model") -> tuple[dict, dict]:
    """Supervised pretraining on `p.classes` of `data`; returns the state dict and its
    provenance (test accuracy on those classes' test images, seconds, steps). Draws its
    random numbers from a forked RNG seeded with `p.seed`, so the run that asked for the
    weights continues with the same random state whether they were cached or not."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from cl_bench.data.benchmarks import keep_classes
    from cl_bench.data.transforms import Preprocess

    classes = list(p.classes)
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or \
            max(classes) >= data.info.n_classes:
        raise ConfigError(f"model.pretrain.classes must be distinct labels of "
                          f"{p.dataset} (0..{data.info.n_classes - 1}), got {classes}")
    if p.epochs < 1 or p.batch_size < 1 or p.lr <= 0:
        raise ConfigError("model.pretrain.epochs, .batch_size and .lr must be positive")
    part = keep_classes(data, classes)
    train_x, train_y, test_x, test_y = part.train_x, part.train_y, part.test_x, part.test_y
    cuda = [device.index or 0] if device.type == "cuda" else []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.manual_seed(p.seed)
        net = build(len(classes)).to(device).train()
        prep = Preprocess(data.info.mean, data.info.std, device, p.augment)
        train_x, train_y = train_x.to(device), train_y.to(device)
        per_epoch = math.ceil(len(train_y) / p.batch_size)
        total = per_epoch * p.epochs
        opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        warm = max(1, int(p.warmup * total))
        def factor(step: int) -> float:  # linear warm-up, then cosine to 0
            done = min(1.0, (step - warm) / max(1, total - warm))
            return min((step + 1) / warm, 0.5 * (1 + math.cos(math.pi * done)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        columns = (TextColumn("pretraining {task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            job = bar.add_task(f"{label} on {p.dataset} ({len(classes)} classes)",
                               total=total, loss="-")
            for _ in range(p.epochs):
                order = torch.randperm(len(train_y), device=device)
                for b in range(per_epoch):
                    idx = order[b * p.batch_size:(b + 1) * p.batch_size]
                    loss = F.cross_entropy(net(prep(train_x[idx], train=True)), train_y[idx],
                                           label_smoothing=p.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    if b % 20 == 0:  # a host sync every 20 steps, for the bar only
                        bar.update(job, loss=f"{loss.item():.3f}")
                    bar.advance(job)
        net.eval()
        with torch.no_grad():
            hits = sum(int((net(prep(test_x[i:i + 500].to(device))).argmax(1)
                            == test_y[i:i + 500].to(device)).sum())
                       for i in range(0, len(test_y), 500))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()
             if not k.startswith("head.")}
    info = {"weights": "pretrain", "pretrain_dataset": p.dataset,
            "pretrain_classes": len(classes), "pretrain_epochs": p.epochs,
            "pretrain_test_acc": hits / max(1, len(test_y)),
            "pretrain_seconds": time.perf_counter() - t0, "pretrain_steps": total,
            "pretrain_device": str(device)}
    return state, info
