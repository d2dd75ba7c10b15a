"""`clbench-tune`: the continual hyper-parameter framework of De Lange et al. (TPAMI 2021,
"A continual learning survey: Defying forgetting in classification tasks"; reference
code Mattdl/CLsurvey `src/framework/framework_train.py`) over any clbench config.

Per task t, using only task t's data (its training split and its validation split,
`benchmark.val_fraction`):
  phase 1 (maximal plasticity search): fine-tune the model kept after task t-1 on task t
    once per learning rate of `tune.lr_grid` (task 1: `tune.first_task_extra_lrs` too);
    A_ft* is the best validation accuracy on task t, lr* its learning rate;
  phase 2 (stability decay): train the configured method on task t with lr*, its
    stability knobs at their start values; accept when A_val >= (1 - p) A_ft*
    (p = `tune.threshold`), else decay the knobs (`KnobDecay`) and try again, at most
    `tune.max_attempts` times, keeping the last attempt if none is accepted.
The kept attempt's whole method state (model, optimiser, memory, plugins) and knob values
start task t+1. Every attempt is a fresh method built from the config with its knob values
and lr, loaded with the kept state of task t-1; the kept attempts make up a normal run
directory, and `tune_attempts.csv` logs every attempt.
"""

from __future__ import annotations

import copy
import csv
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from cl_bench import cli
from cl_bench.data.modes import is_default
from cl_bench.data.stream import Task, TaskStream
from cl_bench.errors import ConfigError
from cl_bench.experiment import (
    Parts,
    Run,
    RunState,
    build_parts,
    build_stream,
    seed_everything,
)
from cl_bench.loggers.console import ConsoleLogger
from cl_bench.methods.finetune import Finetune
from cl_bench.paths import CONF_DIR
from cl_bench.schemas import schema


@schema("tune", "tune")
@dataclass
class TuneConf:
    """`clbench-tune`'s settings: the `tune` node of conf/tune.yaml."""

    lr_grid: list[float] = field(default_factory=lambda: [1e-2, 5e-3, 1e-3, 5e-4, 1e-4])
    first_task_extra_lrs: list[float] = field(default_factory=lambda: [1e-1, 5e-2])
    threshold: float = 0.2  # p: accept when A_val >= (1 - p) * A_ft*
    decay: float = 0.5
    max_attempts: int = 10
    knobs: list[str] | None = None  # full config keys; null: the declared stability knobs
    val_fraction: float = 0.1  # used when benchmark.val_fraction is 0


ConfigStore.instance().store(group="schema/tune", name="tune", node=TuneConf)


def check_settings(node) -> TuneConf:
    """The `tune` node as a TuneConf; a value that makes no sense fails naming its key."""
    s = TuneConf(**OmegaConf.to_container(node, resolve=True))
    if not s.lr_grid:
        raise ValueError("tune.lr_grid is empty; give the learning rates to try, "
                         "e.g. tune.lr_grid=[1e-2,1e-3,1e-4]")
    for key in ("lr_grid", "first_task_extra_lrs"):
        if any(not lr > 0 for lr in getattr(s, key)):
            raise ValueError(f"tune.{key}={getattr(s, key)}: learning rates must be > 0")
    checks = (("threshold", 0 <= s.threshold < 1, "in [0, 1) (the accuracy drop allowed)"),
              ("decay", 0 < s.decay < 1, "in (0, 1)"),
              ("max_attempts", s.max_attempts >= 1, ">= 1"),
              ("val_fraction", 0 < s.val_fraction < 1, "in (0, 1)"))
    for key, ok, need in checks:
        if not ok:
            raise ValueError(f"tune.{key}={getattr(s, key)} must be {need}")
    return s


def declared_knobs(cfg: DictConfig) -> list[str]:
    """Full config keys of the stability knobs the method and its plugins declare."""
    keys = [f"method.{k}" for k in get_class(cfg.method._target_).stability_knobs]
    for name, node in cfg.plugins.items():
        keys += [f"plugins.{name}.{k}" for k in get_class(node._target_).stability_knobs]
    return keys


def knob_values(cfg: DictConfig, keys: Sequence[str]) -> dict[str, float]:
    """The configured value of each knob; a key that names no number fails."""
    values = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"tune.knobs: {key} is {'not a key of the config' if value is None else value!r}"
                f"; a knob is the full key of a number, e.g. plugins.l2_pull.strength")
        values[key] = float(value)
    return values


# -- the decision logic (pure) ------------------------------------------------------------
def lr_candidates(task_id: int, lr_grid: Sequence[float],
                  first_task_extra_lrs: Sequence[float]) -> list[float]:
    """Phase 1's learning rates: the grid, on the first task preceded by the extra ones."""
    return [*first_task_extra_lrs, *lr_grid] if task_id == 0 else list(lr_grid)


def plasticity_search(lrs: Sequence[float],
                      evaluate: Callable[[float], float]) -> tuple[int, list[float]]:
    """Phase 1: `evaluate(lr)` (fine-tune, return the validation accuracy) for each lr;
    returns the index of the best (the first of equals; a diverged attempt, NaN, never
    wins) and every accuracy."""
    accs = [evaluate(lr) for lr in lrs]
    finite = [i for i, a in enumerate(accs) if not math.isnan(a)]
    if not finite:
        raise ValueError(f"fine-tuning diverged at every learning rate {list(lrs)}; "
                         f"give smaller ones in tune.lr_grid")
    return max(finite, key=lambda i: accs[i]), accs


class KnobDecay:
    """Phase 2's schedule of knob values (CLsurvey `hyperparamDecay`). One knob:
    h <- h * factor each time. Several: each decayed alone from the reference values (the
    others restored), then all together, which become the new reference; e.g. factor 0.5
    from (5, 2): (2.5, 2), (5, 1), (2.5, 1), (1.25, 1), (2.5, 0.5), (1.25, 0.5), ..."""

    def __init__(self, start: dict[str, float], factor: float):
        self.factor = factor
        self.reference = dict(start)
        self.alone = 0  # the knob decayed alone next; len(knobs): all together

    def decay(self) -> dict[str, float]:
        keys = list(self.reference)
        if 1 < len(keys) and self.alone < len(keys):
            key = keys[self.alone]
            self.alone += 1
            return {**self.reference, key: self.reference[key] * self.factor}
        self.reference = {k: v * self.factor for k, v in self.reference.items()}
        self.alone = 0
        return dict(self.reference)


def stability_decay(start: dict[str, float], evaluate: Callable[[dict[str, float]], float],
                    a_ft: float, threshold: float, decay: float,
                    max_attempts: int) -> list[tuple[dict[str, float], float]]:
    """Phase 2: `evaluate(knobs)` (train the method, return the validation accuracy) from
    `start`, decaying (`KnobDecay`) until it reaches (1 - threshold) * a_ft, at most
    `max_attempts` times (once without knobs). Returns every (knobs, accuracy) tried; the
    kept attempt is the last: the first accepted one, else the last allowed."""
    target = (1 - threshold) * a_ft
    schedule, knobs, tried = KnobDecay(start, decay), dict(start), []
    while True:
        acc = evaluate(knobs)
        tried.append((knobs, acc))
        if acc >= target or len(tried) >= max_attempts or not knobs:
            return tried
        knobs = schedule.decay()


# -- the run --------------------------------------------------------------------------------
def task_seed(seed: int, task_id: int) -> int:
    """The RNG seed of every attempt on a task: all attempts draw the same batches."""
    return int(np.random.SeedSequence([seed, task_id]).generate_state(1)[0])


class BufferLogger:
    """Holds an attempt's rows until the tuner knows whether it keeps the attempt."""

    def __init__(self):
        self.calls: list[tuple[str, list]] = []

    def log_acc_rows(self, rows):
        self.calls.append(("log_acc_rows", rows))

    def log_curve_rows(self, rows):
        self.calls.append(("log_curve_rows", rows))

    def log_train_rows(self, rows):
        self.calls.append(("log_train_rows", rows))


class TuneConsole(ConsoleLogger):
    """The runner's progress bars, one line per attempt, named after the attempt and,
    once it ends, showing its validation accuracy and verdict (printed as a plain line
    when the output is not a terminal, where the bars show only at the end)."""

    label = ""

    def start_task(self, task_id: int, n_tasks: int, total_steps: int | None) -> None:
        super().start_task(task_id, n_tasks, total_steps)
        self._description = f"task {task_id + 1}/{n_tasks} {self.label}"
        self.progress.update(self._bar, description=self._description)

    def verdict(self, text: str, last: bool = True) -> None:
        self._description += f"  {text}"
        self.progress.update(self._bar, description=self._description)
        if last and not self.console.is_terminal:
            self.console.print(self._description, highlight=False)


@dataclass
class Attempt:
    """One training of one task: its parts, its run state, its buffered rows."""

    parts: Parts
    state: RunState
    buffer: BufferLogger
    val_acc: float
    train_flops: float
    seconds: float
    diverged: bool


class TuneRun(Run):
    """A run whose every task is chosen by the survey's two phases (module docstring)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        cfg = copy.deepcopy(cfg)
        if cfg.skip_done:
            raise ValueError("skip_done=true: clbench-tune neither skips nor resumes runs; "
                             "drop skip_done")
        if not is_default(cfg.stream):
            raise ConfigError(f"stream={cfg.stream.name}: clbench-tune trains task by task "
                              "with the budget's epochs; drop stream= (or use stream=task as "
                              "shipped)")
        self.settings = check_settings(cfg.tune)
        if not cfg.benchmark.get("val_fraction", 0.0):
            cfg.benchmark.val_fraction = self.settings.val_fraction
        keys = declared_knobs(cfg) if self.settings.knobs is None else self.settings.knobs
        self.start_knobs = knob_values(cfg, keys)
        super().__init__(cfg, run_dir)
        self.console = TuneConsole(cfg.logger.console)
        self.summary["tune"] = {}
        self.tune_flops, self.trainings = 0.0, 0
        self._csv = None

    def _train(self) -> None:
        cfg, s = self.cfg, self.settings
        seed_everything(cfg.seed, cfg.deterministic)
        stream = build_stream(cfg)
        parts = build_parts(cfg, self.run_dir, stream)
        self.summary["device"] = str(parts.device)
        self.state.rows = {sc: [] for sc in stream.scenarios}
        self.state.random_init = self._evaluate(parts, parts.evaluator.full)
        self._open_csv()
        kept, knobs = None, self.start_knobs
        for task in stream.tasks:
            lr, a_ft = self._plasticity_search(stream, task, kept)
            kept, knobs, n = self._stability_decay(stream, task, kept, lr, a_ft, knobs)
            self._keep(kept)
            self.summary["tune"][task.id] = {
                "lr": lr, **knobs, "val_acc": kept.val_acc, "finetune_val_acc": a_ft,
                "attempts": n, "accepted": kept.val_acc >= (1 - s.threshold) * a_ft}
            self.summary.update(tune_train_flops=self.tune_flops, tune_trainings=self.trainings)
            self.console.console.print(
                f"task {task.id + 1}: lr {lr:g} (fine-tuning val {a_ft:.4f}), "
                + "".join(f"{k} {v:g}, " for k, v in knobs.items())
                + f"val {kept.val_acc:.4f} after {n} attempt(s)")
        self._finish(kept.parts)

    def _plasticity_search(self, stream: TaskStream, task: Task,
                           kept: Attempt | None) -> tuple[float, float]:
        """Phase 1: lr* and A_ft*."""
        lrs = lr_candidates(task.id, self.settings.lr_grid, self.settings.first_task_extra_lrs)
        rows = []

        def finetune(lr: float) -> float:
            a = self._attempt(stream, task, kept, lr, None)
            rows.append(self._row(task, "finetune", len(rows), lr, {}, a, None))
            return a.val_acc

        best, accs = plasticity_search(lrs, finetune)
        rows[best]["accepted"] = True
        self._write(rows)
        return lrs[best], accs[best]

    def _stability_decay(self, stream: TaskStream, task: Task, kept: Attempt | None,
                         lr: float, a_ft: float,
                         knobs: dict[str, float]) -> tuple[Attempt, dict[str, float], int]:
        """Phase 2: the kept attempt, its knob values and the number of attempts."""
        s = self.settings
        target = (1 - s.threshold) * a_ft
        last: list[Attempt] = []  # the latest attempt only: the kept one is the last
        rows: list[dict] = []

        def train(values: dict[str, float]) -> float:
            a = self._attempt(stream, task, kept, lr, values)
            done = a.val_acc >= target or len(rows) + 1 >= s.max_attempts or not values
            self.console.verdict("kept" if done else "decay")
            rows.append(self._row(task, "method", len(rows), lr, values, a, target, done))
            self._write(rows[-1:])
            last[:] = [a]
            return a.val_acc

        tried = stability_decay(knobs, train, a_ft, s.threshold, s.decay, s.max_attempts)
        return last[0], tried[-1][0], len(tried)

    def _attempt(self, stream: TaskStream, task: Task, start: Attempt | None, lr: float,
                 knobs: dict[str, float] | None) -> Attempt:
        """Trains `task` from the kept state of the task before (`start`): the configured
        method with `knobs`, or plain fine-tuning of its model (`knobs=None`), at `lr`."""
        cfg = copy.deepcopy(self.cfg)
        for key, value in (knobs or {}).items():
            OmegaConf.update(cfg, key, value)
        OmegaConf.update(cfg, "optimizer.lr", lr)
        if knobs is None:
            cfg.eval.every = 0  # phase 1 keeps no curves
        seed_everything(cfg.seed, cfg.deterministic)
        parts = build_parts(cfg, self.run_dir, stream)
        method = parts.method
        if start is not None:
            method.load_state_dict(copy.deepcopy(start.parts.method.state_dict()))
            parts.counter.load_state_dict(copy.deepcopy(start.parts.counter.state_dict()))
            for done in stream.tasks[: task.id]:
                method.skip_task(done.to(parts.device))
        if knobs is None:  # the same model and optimiser, without the method and plugins
            finetune = Finetune(
                model=method.model, optimizer=instantiate(cfg.optimizer), memory=parts.memory,
                preprocess=method.preprocess, class_mask=method.class_mask,
                scenario=method.scenario, counter=parts.counter, name="finetune")
            finetune.optimizer = method.optimizer
            finetune.seen_mask, finetune.old_mask = method.seen_mask, method.old_mask
            parts = replace(parts, method=finetune)
            method = finetune
        for group in method.optimizer.param_groups:  # a loaded state carries its own lr
            group["lr"] = lr
        self.console.label = (f"{'fine-tune' if knobs is None else 'method'} lr={lr:g}"
                              + "".join(f" {k.rsplit('.', 1)[-1]}={v:g}"
                                        for k, v in (knobs or {}).items()))
        state = (copy.deepcopy(start.state) if start is not None else
                 RunState(rows={sc: [] for sc in stream.scenarios},
                          random_init=self.state.random_init))
        buffer, outer = BufferLogger(), (self.loggers, self.state)
        self.loggers, self.state = [buffer], state
        seed = task_seed(cfg.seed, task.id)
        seed_everything(seed, cfg.deterministic)
        flops, t0, diverged = parts.counter.train_flops, time.perf_counter(), False
        try:
            here = task.to(parts.device)
            self._train_task(parts, here, torch.Generator().manual_seed(seed))
            method.model.eval()
            acc = parts.evaluator.task_accuracy(
                method.predict, here.val_x, here.val_y, task.id,
                task_aware=method.predict_needs_task_ids,
                reveal=method.reveal_task_ids)[self.summary["scenario"]]
            method.model.train()
        except FloatingPointError:  # the loss diverged at this lr
            acc, diverged = float("nan"), True
            self.console.end_task()
        finally:
            self.loggers, self.state = outer
        spent = parts.counter.train_flops - flops
        self.tune_flops += spent
        self.trainings += 1
        self.console.verdict("diverged" if diverged else f"val {acc:.4f}", last=knobs is None)
        return Attempt(parts, state, buffer, acc, spent, time.perf_counter() - t0, diverged)

    def _keep(self, attempt: Attempt) -> None:
        """The attempt becomes the run's: its rows go to the loggers, its state is the run's."""
        for kind, rows in attempt.buffer.calls:
            self._log(kind, rows)
        self.state = attempt.state

    def _row(self, task: Task, phase: str, index: int, lr: float, knobs: dict, a: Attempt,
             target: float | None, accepted: bool = False) -> dict:
        return {"task": task.id, "phase": phase, "attempt": index, "lr": lr,
                **{k: knobs.get(k, "") for k in self.start_knobs},
                "val_acc": a.val_acc, "threshold": "" if target is None else target,
                "accepted": accepted, "diverged": a.diverged, "train_flops": a.train_flops,
                "seconds": round(a.seconds, 3)}

    def _open_csv(self) -> None:
        columns = ["task", "phase", "attempt", "lr", *self.start_knobs, "val_acc",
                   "threshold", "accepted", "diverged", "train_flops", "seconds"]
        self._file = open(self.run_dir / "tune_attempts.csv", "w", newline="")
        self._csv = csv.DictWriter(self._file, columns)
        self._csv.writeheader()

    def _write(self, rows: list[dict]) -> None:
        self._csv.writerows(rows)
        self._file.flush()

    def execute(self) -> dict:
        try:
            return super().execute()
        finally:
            if self._csv is not None:
                self._file.close()


def tune_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Tune and run one experiment into `run_dir`; returns its summary row."""
    return TuneRun(cfg, run_dir).execute()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tune")
def _run(cfg: DictConfig) -> float:
    signal.signal(signal.SIGTERM, cli._terminate)
    summary = tune_experiment(cfg, HydraConfig.get().runtime.output_dir)
    return summary[f"acc_{summary['scenario']}"]


def main() -> None:
    """The `clbench-tune` command; errors are reported as `clbench` reports them."""
    cli.main(_run, prog="clbench-tune")


if __name__ == "__main__":
    main()
