"""Start checks: a configured value the run would not honour is an error before any work,
naming the key and what it would need (a stream mode that overrides budget keys, a W&B
mode W&B rejects, a method option a phase ignores, a `budget.match` reference of another
stream). `check_run` runs them all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig

from cl_bench.data.modes import budget_overrides
from cl_bench.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")
# WANDB_MODE values wandb itself accepts (logger.mode=auto defers to it)
WANDB_ENV_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
# keys of a reference run that may differ from the matching run: where files are, not what
# the tasks hold
REFERENCE_FREE = ("benchmark.cache", "benchmark.weights", "benchmark.root",
                  "benchmark.download")


def check_run(cfg: DictConfig) -> None:
    check_stream_budget(cfg)
    check_logger(cfg)
    check_method_options(cfg)
    check_reference(cfg)


def check_stream_budget(cfg: DictConfig) -> None:
    """A single-pass stream (`stream=online`) trains one epoch of `stream.batch_size`
    batches: a budget key asking for more (epochs > 1, iters, drop_last) is refused, and
    `stream.batch_size` is refused on a stream that does not read it."""
    stream, budget = cfg.stream, cfg.budget
    budget_overrides(stream, budget)  # refuses budget.match on a single-pass stream
    if not stream.single_pass:
        if stream.get("batch_size") is not None:
            raise ConfigError(
                f"stream.batch_size={stream.batch_size} is read by single-pass streams only "
                f"(stream=online); stream={stream.name} trains batches of budget.batch_size: "
                "set budget.batch_size instead (stream.batch_size=null)")
        return
    asks = []
    if budget.get("epochs") not in (None, 1):
        asks.append((f"budget.epochs={budget.epochs}", "budget.epochs=1"))
    if budget.get("iters") is not None:
        asks.append((f"budget.iters={budget.iters}", "budget.iters=null"))
    if budget.get("drop_last"):
        asks.append(("budget.drop_last=true", "budget.drop_last=false"))
    if asks:
        raise ConfigError(
            f"stream={stream.name} trains one pass over each task (every training sample "
            f"once), so {' and '.join(a for a, _ in asks)} would not be honoured: set "
            f"{' '.join(f for _, f in asks)}, or use stream=task for several epochs")


def check_logger(cfg: DictConfig) -> None:
    """logger=wandb: a mode W&B accepts (and, for `auto`, a WANDB_MODE it accepts)."""
    lg = cfg.logger
    if lg.name != "wandb":
        return
    if lg.mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={lg.mode} is not a W&B mode; choose one of "
                          f"{', '.join(WANDB_MODES)}")
    env = os.environ.get("WANDB_MODE")
    if lg.mode == "auto" and env and env not in WANDB_ENV_MODES:
        raise ConfigError(f"logger.mode=auto follows the environment's WANDB_MODE={env}, "
                          f"which W&B rejects; set WANDB_MODE to one of "
                          f"{', '.join(WANDB_ENV_MODES)} (or unset it), or set logger.mode")
    if lg.init_timeout <= 0:
        raise ConfigError(f"logger.init_timeout must be > 0 seconds, got {lg.init_timeout}")


def _class(node):
    try:
        return get_class(node._target_)
    except Exception:  # a bad _target_ fails later with Hydra's own message
        return None


def check_method_options(cfg: DictConfig) -> None:
    """A method class may say which of its options a phase would ignore in this config
    (`unhonoured(cfg) -> message or None`)."""
    problem = getattr(_class(cfg.method), "unhonoured", None)
    message = problem(cfg) if callable(problem) else None
    if message:
        raise ConfigError(message)


def batch_size(cfg: DictConfig) -> int:
    """The training batch size the run uses (a single-pass stream's own, else the budget's)."""
    if cfg.stream.single_pass and cfg.stream.get("batch_size"):
        return cfg.stream.batch_size
    return cfg.budget.batch_size


def check_reference(cfg: DictConfig) -> None:
    """`budget.match`: the reference must be a complete run (see `reference_flops`) of the
    same benchmark, classes, tasks, scenario and stream as this run."""
    match = cfg.budget.get("match")
    if match is None:
        return
    from cl_bench.budget.budget import reference_flops
    from cl_bench.identity import resolved_flat

    reference_flops(match, cfg.budget.match_flops)  # a missing or truncated reference
    theirs = json.loads((Path(match).expanduser() / "summary.json").read_text())
    ours = resolved_flat(cfg)
    keys = ["benchmark", "scenario"] + sorted(
        k for k in ours if k.startswith(("benchmark.", "stream."))
        and not k.startswith(REFERENCE_FREE))
    differ = [k for k in keys if k in theirs and str(theirs[k]) != str(ours.get(k, theirs[k]))]
    if differ:
        shown = "; ".join(f"{k}={theirs[k]} there, {ours[k]} here" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ConfigError(f"budget.match={match}: the reference ran another stream ({shown}"
                          f"{more}); match a run of the same benchmark, tasks and stream")


def set_threads(threads: int | None, warn) -> int:
    """Sets torch's intra-op threads to `threads` (null: leaves torch's choice) and returns
    the number in use; warns (one line, through `warn`) when the load average says the
    machine's cores are already busy, so that several threads would fight over them."""
    import torch

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1 (or null: torch's choice), got {threads}")
        torch.set_num_threads(threads)
    n = torch.get_num_threads()
    busy = oversubscribed(n)
    if busy:
        warn(busy)
    return n


def oversubscribed(threads: int) -> str | None:
    """Why `threads` torch threads would oversubscribe this machine (the 1-minute load
    average, less this process, plus `threads` exceeds the cores it may use), or None."""
    if threads < 2 or not hasattr(os, "getloadavg"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    others = max(0.0, os.getloadavg()[0] - 1)
    if others + threads <= (cores or 1):
        return None
    return (f"load average {others + 1:.1f} on {cores} cores: torch's {threads} threads will "
            "compete with other work and can make the run many times slower; set threads=1 "
            "(or OMP_NUM_THREADS=1)")
