"""Runs one experiment: the run directory, signals, checkpoints, the task loop and the
summary. Its parts are built by `cl_bench.build` (re-exported here by their old names)."""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import json
import logging
import math
import platform
import resource
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import cl_bench
from cl_bench.build import (  # noqa: F401  (the old import names of the parts' builders)
    Parts,
    build_memory,
    build_model,
    build_parts,
    build_plugins,
    build_stream,
    instantiate_part,
    resolve_device,
    scenario_of,
    seed_everything,
)
from cl_bench.checkpoint import (
    CHECKPOINT,
    IN_TASK,
    CorruptCheckpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cl_bench.checks import check_run, set_threads
from cl_bench.config import check_config
from cl_bench.data.modes import sees_labels
from cl_bench.data.stream import Task
from cl_bench.errors import describe, user_error
from cl_bench.identity import (
    find_runs,
    git_commit,
    resolved_flat,
    run_id,
    same_config,
    source_hash,
)
from cl_bench.loggers.console import ConsoleLogger
from cl_bench.loggers.csv_logger import CSVLogger, write_summary
from cl_bench.metrics.accuracy import all_metrics
from cl_bench.metrics.stability import stability_metrics
from cl_bench.provenance import machine
from cl_bench.rundir import SpaceReserve, drop_stale_error

log = logging.getLogger("cl_bench")  # clbench.log in the run directory (Hydra's job log)
log.addHandler(logging.NullHandler())



def tuned_with(cfg: DictConfig) -> str:
    """", or use optimizer=<preset>" when the run's optimizer is not the one its method
    preset's values were tuned with (`tuned_optimizer`), else ""."""
    preset = cfg.get("tuned_optimizer")
    used = str(cfg.optimizer.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if preset is None or used == preset:
        return ""
    return (f", or use optimizer={preset}: method={cfg.method.name}'s values were tuned "
            f"with it, not with {used}")

class RunInterrupted(KeyboardInterrupt):
    """Raised (with the signal's name) for SIGINT or SIGTERM so the run is recorded as
    interrupted."""


class StopRequests:
    """SIGINT/SIGTERM during a run stop it at the next step boundary: a KeyboardInterrupt
    raised wherever the signal lands can hit a finaliser or a library's cleanup, where
    Python swallows it and the run would go on. A second signal stops at once."""

    def __init__(self):
        self.pending: str | None = None
        self.previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.pending is not None:
            raise RunInterrupted(name)
        self.pending = name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def check(self) -> None:
        if self.pending is not None:
            raise RunInterrupted(self.pending)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def identity(cfg: DictConfig) -> dict:
    """The keys that identify a run, then every resolved config key by dotted name."""
    flat = resolved_flat(cfg)
    return {
        "run_id": run_id(cfg),
        "benchmark": cfg.benchmark.name,
        "method": cfg.method.name,
        "memory": cfg.memory.name,
        "memory_size": cfg.memory.size,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "scenario": flat["scenario"],
        **{k: v for k, v in flat.items() if k not in ("seed", "scenario")},
        "git_commit": git_commit(),
        "source_hash": source_hash(),
        "torch_version": torch.__version__,
        "torchvision_version": _version("torchvision"),
        "hydra_version": _version("hydra-core"),
        "clbench_version": cl_bench.__version__,
        "python_version": platform.python_version(),
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class RunState:
    """Everything a run carries from task to task; saved as one unit after each task
    (`checkpoint.pt`) and restored as one, so nothing can be saved and not restored."""

    task: int = -1  # last completed task
    step: int = 0
    rows: dict = field(default_factory=dict)  # scenario -> accuracy rows, one per task
    curves: list = field(default_factory=list)  # continual-evaluation rows
    random_init: dict = field(default_factory=dict)  # accuracy of the untrained model
    task_flops: list = field(default_factory=list)  # [theoretical, executed] at each task end
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    test_seconds: float = 0.0
    method: dict = field(default_factory=dict)
    counter: dict = field(default_factory=dict)
    batch_rng: torch.Tensor | None = None
    rng: dict = field(default_factory=dict)
    # the method's seen/old class masks where batches set them (`Method.see_labels`):
    # replaying the tasks' classes on resume would not rebuild them
    class_masks: dict = field(default_factory=dict)
    # a checkpoint inside a task (checkpoint_step.pt): {task, steps_done}
    in_task: dict = field(default_factory=dict)

    def save(self, run_dir: Path, parts: Parts, batch_gen: torch.Generator,
             name: str = CHECKPOINT) -> None:
        self.method = parts.method.state_dict()
        self.counter = parts.counter.state_dict()
        self.batch_rng, self.rng = batch_gen.get_state(), rng_state()
        if sees_labels(parts.stream_mode):
            self.class_masks = {"seen": parts.method.seen_mask, "old": parts.method.old_mask}
        # shallow: asdict would turn dataclasses inside the method's state (Batch) into dicts
        save_checkpoint(run_dir, {f.name: getattr(self, f.name) for f in fields(self)}, name)
        self.method = {}  # held only while saving

    def restore(self, parts: Parts, batch_gen: torch.Generator) -> None:
        parts.method.load_state_dict(self.method)
        parts.counter.load_state_dict(self.counter)
        batch_gen.set_state(self.batch_rng)
        set_rng_state(self.rng)
        self.method = {}

    def restore_class_masks(self, parts: Parts) -> None:
        """The seen/old class masks batches had set (after the skipped tasks redid theirs)."""
        if self.class_masks:
            parts.method.seen_mask = self.class_masks["seen"].to(parts.device)
            parts.method.old_mask = self.class_masks["old"].to(parts.device)


class Run:
    """One run: builds its parts, restores or starts its state, runs the task loop and
    writes the summary."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.summary = identity(cfg)
        self.summary.update(status="running", error="")
        self.state = RunState()
        self.resumed = False
        self.in_task: dict | None = None  # a checkpoint inside the next task, to resume from
        self.saved_step: int | None = None  # the step of the last checkpoint inside a task
        self.loggers: list = []
        self.console = ConsoleLogger(cfg.logger.console)
        self.stops = StopRequests()

    def _open(self) -> None:
        """Restores the last checkpoint (when resuming; a corrupt one is reported and the
        run starts over) and opens the loggers, after checking the config."""
        cfg = self.cfg
        check_config(cfg)
        check_run(cfg)
        if self.resume:
            try:
                checkpoint = load_checkpoint(self.run_dir)
            except CorruptCheckpoint as err:
                self.console.warn(f"{err}; starting the run over")
                checkpoint = None
            if checkpoint is not None:
                self.state = RunState(**checkpoint)
                self.resumed = True
            self.in_task = self._load_in_task()
        if self.in_task is None:  # a fresh start, or one from the task's start
            (self.run_dir / IN_TASK).unlink(missing_ok=True)
        self.loggers = [CSVLogger(
            self.run_dir, keep_through_task=self.state.task if self.resume else None,
            keep_through_step=self.in_task["step"] if self.in_task else None)]
        if cfg.logger.name == "wandb":
            from cl_bench.loggers.wandb_logger import WandbLogger

            lg = cfg.logger
            self.loggers.append(WandbLogger(
                self.run_dir, config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                name=self.run_dir.name, project=lg.project, entity=lg.entity, mode=lg.mode,
                group=lg.group or _sweep_group(), tags=lg.tags, init_timeout=lg.init_timeout,
                warn=self.console.warn,
            ))

    def _load_in_task(self) -> dict | None:
        """checkpoint_step.pt when it is inside the task after the last completed one."""
        try:
            checkpoint = load_checkpoint(self.run_dir, IN_TASK)
        except CorruptCheckpoint as err:
            self.console.warn(f"{err}; resuming from the task's start")
            return None
        if checkpoint is None or checkpoint["in_task"].get("task") != self.state.task + 1:
            return None  # older than checkpoint.pt: that task completed since
        return checkpoint

    def _log(self, kind: str, rows) -> None:
        for logger in self.loggers:
            getattr(logger, kind)(rows)

    def execute(self) -> dict:
        """Runs to the end. Whatever stops it, summary.json says why (status, error) and
        error.txt holds the traceback; the summary is written first (small) at the start
        and at the end, so a full disk or a signal does not lose it."""
        start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        failure, reserve = None, SpaceReserve(self.run_dir)
        try:
            write_summary(self.run_dir, self.summary)
            reserve.take()
            log.info("run %s in %s", self.summary["run_id"], self.run_dir)
            self._open()
            with self.stops:
                self._train()
            self.summary["status"] = "completed"
            drop_stale_error(self.run_dir)
        except KeyboardInterrupt as err:
            at = self.state.task + 1
            where = (f"its checkpoint at step {self.saved_step}" if self.saved_step
                     else f"the start of task {at}")
            reason = (f"interrupted by {str(err) or 'SIGINT (Ctrl-C)'} at step "
                      f"{self.state.step} (task {at}); rerun with skip_done=true to resume "
                      f"from {where}")
            self.summary.update(status="interrupted", error=reason)
            failure = traceback.format_exc()
            err.clbench_reason = reason
            err.clbench_run_dir = self.run_dir
            raise
        except Exception as err:
            cause = user_error(err) or err
            self.summary.update(status="failed", error=f"{type(cause).__name__}: "
                                                       f"{describe(cause)}")
            failure = traceback.format_exc()
            err.clbench_run_dir = self.run_dir
            raise
        finally:
            reserve.release()
            self.console.stop()
            st = self.state
            self.summary.update(
                wall_seconds=time.perf_counter() - start,
                train_seconds=st.train_seconds,
                eval_seconds=st.eval_seconds,
                test_seconds=st.test_seconds,
                eval_overhead=st.eval_seconds / st.train_seconds if st.train_seconds else None,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            )
            self._close(failure)
        return self.summary

    def _close(self, failure: str | None) -> None:
        """Summary first, then error.txt (the error, then the traceback), then the other
        loggers. After a failure nothing here may replace the error in flight (a full disk
        fails these writes too)."""
        steps = [functools.partial(write_summary, self.run_dir, self.summary)]
        if failure is not None:
            text = f"{self.summary['status']}: {self.summary['error']}\n\n{failure}"
            log.error("run %s", text)
            steps.append(functools.partial((self.run_dir / "error.txt").write_text, text))
        for logger in self.loggers:
            if not isinstance(logger, CSVLogger):  # the CSV logger's summary is written
                steps.append(functools.partial(logger.log_summary, self.summary))
            steps.append(logger.close)
        for step in steps:
            try:
                step()
            except Exception as err:
                if failure is None:
                    raise
                log.error("while recording the failure: %s", describe(err))

    def _train(self) -> None:
        cfg, state = self.cfg, self.state
        self.summary["threads"] = set_threads(cfg.get("threads"), self.console.warn)
        seed_everything(cfg.seed, cfg.deterministic)
        parts = build_parts(cfg, self.run_dir)
        self.summary["device"] = str(parts.device)
        self.summary.update(machine(parts.device))
        if parts.budget.match is not None:
            self.summary["budget_match"] = str(Path(parts.budget.match).expanduser().resolve())
        self._report_provenance(parts.stream.provenance)
        batch_gen = torch.Generator().manual_seed(cfg.seed)
        if self.resumed:
            state.restore(parts, batch_gen)
            self.summary["resumed_after_task"] = state.task
            for task in parts.stream.tasks[: state.task + 1]:
                parts.method.skip_task(task.to(parts.device))
            state.restore_class_masks(parts)
        else:
            state.rows = {s: [] for s in parts.stream.scenarios}
            state.random_init = self._evaluate(parts, parts.evaluator.full)
        for task in parts.stream.tasks[state.task + 1 :]:
            self._train_task(parts, task.to(parts.device), batch_gen)
            state.save(self.run_dir, parts, batch_gen)
            (self.run_dir / IN_TASK).unlink(missing_ok=True)
            self.saved_step = None
        self._finish(parts)

    def _report_provenance(self, provenance: dict) -> None:
        """How the stream's inputs were made (cached features: the extractor's weights and
        the cache file) goes into the summary, the console and clbench.log."""
        if not provenance:
            return
        self.summary.update(provenance)
        if "features_cache" in provenance:
            p = provenance
            how = (f"read from {p['features_cache']}" if p["features_cache_hit"] else
                   f"computed in {p['features_seconds']:.1f} s, "
                   + ("not cached" if p.get("features_cache_error") else
                      f"cached in {p['features_cache']}"))
            line = (f"features: conv5 {p['extractor_weights']} (sha256 "
                    f"{p['extractor_sha256'][:12]}), {how}")
            log.info(line)
            self.console.say(line)
        if "weights" in provenance:
            p = provenance
            line = f"weights: {p['weights']}"
            if "weights_cache" in p:
                how = "read from" if p["weights_cache_hit"] else "pretrained now, cached in"
                line += (f" ({how}"
                         f" {p['weights_cache']}; test accuracy on the pretraining classes "
                         f"{100 * p['pretrain_test_acc']:.2f} %)")
            log.info(line)
            self.console.say(line)
        if provenance.get("features_cache_error"):
            self.console.warn(provenance["features_cache_error"])

    def _evaluate(self, parts: Parts, score, continual: bool = False) -> dict:
        """Time goes to `eval_seconds` (continual probes) or `test_seconds` (test sets)."""
        t0 = time.perf_counter()
        method = parts.method
        method.model.eval()
        result = {s: acc.tolist() for s, acc in
                  score(method.predict, task_aware=method.predict_needs_task_ids,
                        reveal=method.reveal_task_ids).items()}
        method.model.train()
        if continual:
            self.state.eval_seconds += time.perf_counter() - t0
        else:
            self.state.test_seconds += time.perf_counter() - t0
        return result

    def _acc_rows(self, result: dict, step_fields: dict) -> list[dict]:
        scenario = self.summary["scenario"]
        return [{**step_fields, "eval_task": j, "accuracy": result[scenario][j],
                 **{f"acc_{s}": result[s][j] for s in result}}
                for j in range(len(result[scenario]))]

    def _train_task(self, parts: Parts, task: Task, batch_gen: torch.Generator) -> None:
        cfg, state, method = self.cfg, self.state, parts.method
        every, train_every = cfg.eval.every, max(1, cfg.logger.train_every)
        mode = cfg.stream
        see_labels = sees_labels(mode)
        if mode.boundaries:
            method.begin_task(task)
        data = method.train_data(task)
        steps = parts.budget.steps_per_task(len(data))
        method.plan_task(steps)
        self.console.start_task(task.id, len(parts.stream), steps)
        window = LossWindow(parts.device)
        batches = parts.budget.batches(len(data), batch_gen, parts.device, task.id,
                                       method.active_samples, method.active_version)
        done = 0  # steps of this task trained
        if self.in_task is not None:
            done = self._resume_in_task(parts, batches, batch_gen)
        t_task, eval_before = time.perf_counter(), state.eval_seconds
        t_start = time.perf_counter() - state.train_seconds - state.eval_seconds
        saved_at, saved_done = time.monotonic(), done
        resumable = method.resumes_in_task and all(p.resumes_in_task for p in method.plugins)
        for idx in batches:
            batch = data[idx]
            batch.sample = idx
            if see_labels:
                method.see_labels(batch.y)
            window.add(method.observe(batch))
            state.step += 1
            self.stops.check()
            if state.step % train_every == 0:
                self._flush_train(task.id, window, parts.counter, t_start)
            if every and state.step % every == 0:
                probes = functools.partial(parts.evaluator.probes, n_seen=task.id + 1)
                curve = self._evaluate(parts, probes, continual=True)
                rows = self._acc_rows(curve, {"step": state.step, "train_task": task.id})
                state.curves += rows
                self._log("log_curve_rows", rows)
            done += 1
            if (resumable and state.step % train_every == 0
                    and self._in_task_due(done - saved_done, saved_at)):
                self._save_in_task(parts, batch_gen, task.id, done,
                                   (time.perf_counter() - t_task)
                                   - (state.eval_seconds - eval_before))
                saved_at, saved_done = time.monotonic(), done
        if window.n:
            self._flush_train(task.id, window, parts.counter, t_start)
        self.console.end_task()
        if mode.boundaries:
            method.end_task(task)
        state.train_seconds += (time.perf_counter() - t_task) - (state.eval_seconds - eval_before)
        result = self._evaluate(parts, parts.evaluator.full)
        self._log("log_acc_rows", self._acc_rows(result, {"train_task": task.id}))
        for s in parts.stream.scenarios:
            state.rows[s].append(result[s])
        state.task = task.id
        state.task_flops.append([parts.counter.train_flops, parts.counter.train_flops_dense])
        scenario = self.summary["scenario"]
        log.info("task %d/%d: %d steps so far, %.1f s training; %s accuracy per task %s",
                 task.id + 1, len(parts.stream), state.step, state.train_seconds, scenario,
                 " ".join(f"{a:.4f}" for a in result[scenario]))

    def _in_task_due(self, steps: int, saved_at: float) -> bool:
        """Whether a checkpoint inside the task is due (`checkpoint.every_*`), `steps` and
        the time since the last one; asked right after a train-log flush, when no loss
        waits in the window."""
        every = self.cfg.checkpoint
        return bool((every.every_steps and steps >= every.every_steps) or (
            every.every_minutes is not None
            and time.monotonic() - saved_at >= 60 * every.every_minutes))

    def _save_in_task(self, parts: Parts, batch_gen: torch.Generator, task_id: int, done: int,
                      task_seconds: float) -> None:
        """checkpoint_step.pt: the run's state after `done` steps of task `task_id`, its
        training time so far included."""
        state = self.state
        state.in_task = {"task": task_id, "steps_done": done, "step": state.step}
        state.train_seconds += task_seconds
        try:
            state.save(self.run_dir, parts, batch_gen, IN_TASK)
            self.saved_step = state.step
        finally:
            state.train_seconds -= task_seconds
            state.in_task = {}

    def _resume_in_task(self, parts: Parts, batches, batch_gen: torch.Generator) -> int:
        """Continues the task from checkpoint_step.pt: draws the batches its steps used (so
        the iterator stands where it stood) and restores the method, counters, RNGs, log
        rows and times saved there; returns the steps already done."""
        saved = RunState(**self.in_task)
        self.in_task = None
        done = saved.in_task["steps_done"]
        for _ in itertools.islice(batches, done):
            pass
        saved.restore(parts, batch_gen)
        saved.restore_class_masks(parts)
        state = self.state
        state.step, state.curves = saved.step, saved.curves
        state.train_seconds, state.eval_seconds = saved.train_seconds, saved.eval_seconds
        state.test_seconds = saved.test_seconds
        self.summary["resumed_at_step"] = self.saved_step = saved.step
        self.console.advance(done, math.nan)
        log.info("resumed task %d at its step %d (step %d of the run)", saved.in_task["task"],
                 done, saved.step)
        return done

    def _flush_train(self, task_id, window: LossWindow, counter, t_start) -> None:
        n, means = window.flush()  # the loss sync every logger.train_every steps
        if not math.isfinite(means["loss"]):
            first = self.state.step - n + 1
            raise FloatingPointError(
                f"the training loss became {means['loss']} in steps {first}-{self.state.step} "
                f"(task {task_id}); the run has diverged: lower optimizer.lr"
                f"{tuned_with(self.cfg)}")
        self.console.advance(n, means["loss"])
        self._log("log_train_rows", [{
            "step": self.state.step, "train_task": task_id, "loss": means.pop("loss"),
            "flops_cumulative": counter.train_flops, "seconds": time.perf_counter() - t_start,
            "flops_dense_cumulative": counter.train_flops_dense, **counter.component_columns(),
            **{k.removeprefix("logged:") if k.startswith("logged:") else f"loss_{k}": v
               for k, v in means.items()},
        }])

    def _finish(self, parts: Parts) -> None:
        cfg, state, counter = self.cfg, self.state, parts.counter
        matrices = {s: np.array(r) for s, r in state.rows.items()}
        for s, a in matrices.items():
            self.summary.update(all_metrics(a, np.array(state.random_init[s]), s))
        self.summary.update(eval_every=cfg.eval.every, eval_probe_size=cfg.eval.probe_size,
                            eval_precision=parts.evaluator.precision,
                            **stability_metrics(state.curves, parts.stream.scenarios))
        if state.curves and cfg.eval.plot:
            from cl_bench.report.stability_plot import write_stability_plot

            write_stability_plot(self.run_dir)
        self.summary.update(
            train_flops=counter.train_flops,
            train_flops_dense=counter.train_flops_dense,
            **_per_task(state.task_flops, state.task + 1),
            eval_flops=counter.eval_flops,
            memory_bytes=parts.memory.nbytes,
            steps=state.step,
            train_seconds=state.train_seconds,
            eval_seconds=state.eval_seconds,
            test_seconds=state.test_seconds,
            **counter.component_columns(),
        )
        self.summary.update(parts.memory.stats())
        self.summary.update(parts.method.summary())
        log.info("completed: %s; train FLOPs %.4g", ", ".join(
            f"acc_{s} {self.summary[f'acc_{s}']:.4f}" for s in matrices), counter.train_flops)
        self.console.report(matrices, self.summary, self.run_dir)


def _per_task(ends: list, n_tasks: int) -> dict:
    """Training FLOPs of each task, theoretical and as executed, from the cumulative
    counts at the task ends (none when a resumed run's checkpoint predates them)."""
    if len(ends) != n_tasks:
        return {}
    starts = [[0, 0], *ends[:-1]]
    return {"train_flops_per_task": [e[0] - b[0] for b, e in zip(starts, ends, strict=True)],
            "train_flops_dense_per_task": [e[1] - b[1] for b, e in zip(starts, ends,
                                                                       strict=True)]}


class LossWindow:
    """Running sums of the step losses (and loss terms) between train.csv rows, kept on
    the device: the only host sync is the flush."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros((), device=self.device)
        self.terms: dict[str, torch.Tensor] = {}
        self.logged: dict[str, torch.Tensor] = {}  # a step's `ctx.log`, by name
        self.logged_n: dict[str, int] = {}  # steps that logged it
        self.n = 0

    def add(self, out: dict) -> None:
        self.total += out["loss"]
        self.n += 1
        for k, v in out.get("terms", {}).items():
            self.terms[k] = self.terms[k] + v if k in self.terms else v.clone()
        for k, v in out.get("logged", {}).items():
            self.logged[k] = self.logged[k] + v if k in self.logged else v.clone()
            self.logged_n[k] = self.logged_n.get(k, 0) + 1

    def flush(self) -> tuple[int, dict[str, float]]:
        """(steps, means): `loss` and the terms over the window's steps (keys `loss`,
        `<term>`), each logged number over the steps that logged it (key `logged:<name>`)."""
        values = torch.stack([self.total, *self.terms.values()]).div(self.n).tolist()
        means = dict(zip(["loss", *self.terms], values, strict=True))
        if self.logged:
            counts = torch.tensor(list(self.logged_n.values()), device=self.device)
            logged = torch.stack(list(self.logged.values())).div(counts).tolist()
            means.update({f"logged:{k}": v for k, v in zip(self.logged, logged, strict=True)})
        n = self.n
        self.reset()
        return n, means


def _sweep_group() -> str | None:
    """The sweep directory's name when this run is a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def _move_log(removed: Path, previous: Path) -> None:
    """Points the log files that Hydra opened in the removed fresh run directory at the
    reused run's own clbench.log (appended to)."""
    for handler in logging.getLogger().handlers:
        name = getattr(handler, "baseFilename", None)
        if isinstance(handler, logging.FileHandler) and name and \
                Path(name).parent.resolve() == removed.resolve():
            handler.close()
            handler.baseFilename = str(previous.resolve() / Path(name).name)
            handler.mode = "a"  # reopened at the next record


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def reuse_in_place(cfg: DictConfig, run_dir: Path) -> dict | None:
    """A fixed run folder (a study's `<row>_seed<seed>`) that already holds this run: its
    summary when it completed, else the run resumed there from its checkpoint. The same run
    is the same config; the code version may differ (the summary records its commit)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("status") == "completed" and same_config(summary, cfg):
        ConsoleLogger(cfg.logger.console).say(f"skip_done: already completed in {run_dir}")
        return summary
    if any((run_dir / f).is_file() for f in (CHECKPOINT, IN_TASK)) and same_config(summary, cfg):
        ConsoleLogger(cfg.logger.console).say(f"skip_done: resuming in {run_dir}")
        return Run(cfg, run_dir, resume=True).execute()
    return None


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run one experiment into `run_dir` and return its summary row.

    With `skip_done=true`, this run in `run_dir` itself (a fixed folder) or an earlier run
    with the same run id under `output_root` is reused: a completed one is skipped, an
    unfinished one is resumed in its own directory from its last checkpoint (inside a task,
    or at a task's end); a fresh `run_dir` is then removed.
    """
    if cfg.skip_done:
        rid = run_id(cfg)
        here = Path(run_dir).resolve()
        reused = reuse_in_place(cfg, here)
        if reused is not None:
            return reused
        for previous, summary in find_runs(cfg.output_root, rid):
            if previous.resolve() == here:
                continue
            shutil.rmtree(run_dir, ignore_errors=True)
            _remove_if_empty(Path(run_dir).parent)  # a date folder made for this run only
            _move_log(Path(run_dir), previous)
            console = ConsoleLogger(cfg.logger.console)
            if summary.get("status") == "completed":
                console.say(f"skip_done: run {rid} already completed in {previous}")
                return summary
            console.say(f"skip_done: resuming run {rid} in {previous}")
            return Run(cfg, previous, resume=True).execute()
    return Run(cfg, run_dir).execute()
