"""Builds the parts of a run from its config and runs the task loop."""

from __future__ import annotations

import hashlib
import json
import platform
import random
import resource
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cl_bench
from cl_bench.data.stream import TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.loggers.console import ConsoleLogger
from cl_bench.loggers.csv_logger import COMPONENT_COLUMNS, CSVLogger
from cl_bench.metrics.accuracy import all_metrics
from cl_bench.metrics.evaluator import Evaluator


class RunInterrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler so a terminated run is recorded as interrupted."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(requested)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def flatten(container: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in container.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = json.dumps(value) if isinstance(value, list) else value
    return flat


def git_commit() -> str:
    src = Path(cl_bench.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=src,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=src, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty.strip() else "")) if commit else "unknown"


def identity(cfg: DictConfig) -> dict:
    """The keys that identify a run, then every resolved config key by dotted name."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    flat = flatten(resolved)
    commit = git_commit()
    stamp = {k: v for k, v in flat.items() if not k.startswith(("data.", "logger."))}
    digest = hashlib.sha1(json.dumps([stamp, commit], sort_keys=True, default=str).encode())
    return {
        "run_id": digest.hexdigest()[:12],
        "benchmark": cfg.benchmark.name,
        "method": cfg.method.name,
        "memory": cfg.memory.name,
        "memory_size": cfg.memory.size,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "scenario": flat["scenario"],
        **{k: v for k, v in flat.items() if k not in ("seed", "scenario")},
        "git_commit": commit,
        "torch_version": torch.__version__,
        "clbench_version": cl_bench.__version__,
        "python_version": platform.python_version(),
    }


def build_stream(cfg: DictConfig) -> TaskStream:
    stream = instantiate(cfg.benchmark, root=cfg.data.root, download=cfg.data.download)
    scenario = str(cfg.scenario.value if hasattr(cfg.scenario, "value") else cfg.scenario)
    if scenario not in stream.scenarios:
        raise ValueError(
            f"scenario={scenario} is not available on benchmark={cfg.benchmark.name}; "
            f"it supports {list(stream.scenarios)}"
        )
    return stream


class Run:
    """One run: the stream, the method, the evaluator and the loggers, and the task loop."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.summary = identity(cfg)
        self.summary.update(status="running", error="")
        self.loggers = [CSVLogger(self.run_dir)]
        if cfg.logger.name == "wandb":
            from cl_bench.loggers.wandb_logger import WandbLogger

            lg = cfg.logger
            self.loggers.append(WandbLogger(
                self.run_dir, config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                name=self.run_dir.name, project=lg.project, entity=lg.entity, mode=lg.mode,
                group=lg.group or _sweep_group(self.run_dir), tags=lg.tags,
            ))
        self.console = ConsoleLogger(cfg.logger.console)

    def _log(self, kind: str, rows) -> None:
        for logger in self.loggers:
            getattr(logger, kind)(rows)

    def execute(self) -> dict:
        start = time.perf_counter()
        self.train_seconds = self.eval_seconds = 0.0
        try:
            self._train()
            self.summary["status"] = "completed"
        except KeyboardInterrupt:
            self.summary["status"] = "interrupted"
            raise
        except Exception as err:
            self.summary.update(status="failed", error=f"{type(err).__name__}: {err}")
            (self.run_dir / "error.txt").write_text(traceback.format_exc())
            raise
        finally:
            self.console.stop()
            self.summary.update(
                wall_seconds=time.perf_counter() - start,
                train_seconds=self.train_seconds,
                eval_seconds=self.eval_seconds,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            )
            self._log("log_summary", self.summary)
            for logger in self.loggers:
                logger.close()
        return self.summary

    def _train(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed, cfg.deterministic)
        device = resolve_device(str(getattr(cfg.device, "value", cfg.device)))
        stream = build_stream(cfg)
        scenario = self.summary["scenario"]
        preprocess = Preprocess(stream.mean, stream.std, device, cfg.benchmark.augment)
        class_mask = stream.class_mask(device)
        model = instantiate(cfg.model, input_shape=stream.input_shape,
                            n_classes=stream.n_classes).to(device)
        budget = instantiate(cfg.budget)
        counter = budget.counter.attach(model)
        memory = instantiate(cfg.memory, device=device, seed=cfg.seed)
        method = instantiate(
            cfg.method, model=model, optimizer=instantiate(cfg.optimizer), memory=memory,
            preprocess=preprocess, class_mask=class_mask, scenario=scenario,
        )
        if hasattr(method, "bind_run"):  # methods with extra networks or output files
            method.bind_run(counter=counter, run_dir=self.run_dir)
        evaluator = Evaluator(stream, preprocess, class_mask, counter, device,
                              probe_size=cfg.eval.probe_size, batch_size=cfg.eval.batch_size,
                              seed=cfg.seed)
        self.summary["device"] = str(device)
        batch_gen = torch.Generator().manual_seed(cfg.seed)
        every, train_every = cfg.eval.every, max(1, cfg.logger.train_every)

        def evaluate(score):
            t0 = time.perf_counter()
            model.eval()
            result = {s: acc.tolist() for s, acc in score(method.predict).items()}
            model.train()
            self.eval_seconds += time.perf_counter() - t0
            return result

        def acc_rows(result, step_fields):
            return [
                {**step_fields, "eval_task": j, "accuracy": result[scenario][j],
                 **{f"acc_{s}": result[s][j] for s in result}}
                for j in range(len(result[scenario]))
            ]

        random_init = evaluate(evaluator.full)
        rows: dict[str, list] = {s: [] for s in stream.scenarios}
        step = 0
        t_start = time.perf_counter()
        for task in stream:
            task = task.to(device)
            method.before_task(task)
            x, y, task_ids = method.train_data(task)
            self.console.start_task(task.id, len(stream), budget.steps_per_task(len(y)))
            loss_sum, loss_n = torch.zeros((), device=device), 0
            t_task = time.perf_counter()
            eval_before = self.eval_seconds
            for idx in budget.batches(len(y), batch_gen, device):
                out = method.observe(x[idx], y[idx], task_ids[idx])
                step += 1
                loss_sum += out["loss"]
                loss_n += 1
                if step % train_every == 0:
                    self._flush_train(step, task.id, loss_sum, loss_n, counter, t_start)
                    loss_sum, loss_n = torch.zeros((), device=device), 0
                if every and step % every == 0:
                    curve = evaluate(lambda p, n=task.id + 1: evaluator.probes(p, n))
                    self._log("log_curve_rows", acc_rows(curve, {"step": step,
                                                                 "train_task": task.id}))
            if loss_n:
                self._flush_train(step, task.id, loss_sum, loss_n, counter, t_start)
            self.console.end_task()
            method.after_task(task)
            self.train_seconds += (time.perf_counter() - t_task) - (self.eval_seconds - eval_before)
            result = evaluate(evaluator.full)
            self._log("log_acc_rows", acc_rows(result, {"train_task": task.id}))
            for s in stream.scenarios:
                rows[s].append(result[s])
        matrices = {s: np.array(r) for s, r in rows.items()}
        for s, a in matrices.items():
            self.summary.update(all_metrics(a, np.array(random_init[s]), s))
        self.summary.update(
            train_flops=counter.train_flops,
            eval_flops=counter.eval_flops,
            memory_bytes=memory.nbytes,
            steps=step,
            **component_flops(counter),
        )
        self.summary["wall_seconds"] = time.perf_counter() - t_start
        self.console.report(matrices, self.summary, self.run_dir)

    def _flush_train(self, step, task_id, loss_sum, loss_n, counter, t_start) -> None:
        loss = (loss_sum / loss_n).item()
        self.console.advance(loss_n, loss)
        self._log("log_train_rows", [{
            "step": step, "train_task": task_id, "loss": loss,
            "flops_cumulative": counter.train_flops, "seconds": time.perf_counter() - t_start,
            **component_flops(counter),
        }])


def component_flops(counter) -> dict:
    return {col: counter.components.get(col.removeprefix("flops_"), 0) for col in COMPONENT_COLUMNS}


def _sweep_group(run_dir: Path) -> str | None:
    parts = run_dir.resolve().parts
    return parts[-2] if "multirun" in parts else None


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run one experiment into `run_dir` and return its summary row."""
    return Run(cfg, run_dir).execute()
