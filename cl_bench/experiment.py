"""Builds the parts of a run from its config and runs the task loop."""

from __future__ import annotations

import importlib.metadata
import platform
import random
import resource
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cl_bench
from cl_bench.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cl_bench.data.stream import TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.identity import find_runs, git_commit, resolved_flat, run_id
from cl_bench.loggers.console import ConsoleLogger
from cl_bench.loggers.csv_logger import COMPONENT_COLUMNS, CSVLogger
from cl_bench.metrics.accuracy import all_metrics
from cl_bench.metrics.evaluator import Evaluator
from cl_bench.metrics.stability import stability_metrics


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

    def __init__(self, cfg: DictConfig, run_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.summary = identity(cfg)
        self.summary.update(status="running", error="")
        # resuming continues after the last checkpointed task, or starts over without one
        self.checkpoint = load_checkpoint(self.run_dir) if resume else None
        done = self.checkpoint["task"] if self.checkpoint else -1
        self.loggers = [CSVLogger(self.run_dir, keep_through_task=done if resume else None)]
        if cfg.logger.name == "wandb":
            from cl_bench.loggers.wandb_logger import WandbLogger

            lg = cfg.logger
            self.loggers.append(WandbLogger(
                self.run_dir, config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                name=self.run_dir.name, project=lg.project, entity=lg.entity, mode=lg.mode,
                group=lg.group or _sweep_group(), tags=lg.tags,
            ))
        self.console = ConsoleLogger(cfg.logger.console)

    def _log(self, kind: str, rows) -> None:
        for logger in self.loggers:
            getattr(logger, kind)(rows)

    def execute(self) -> dict:
        start = time.perf_counter()
        self.train_seconds = self.eval_seconds = self.test_seconds = 0.0
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
                test_seconds=self.test_seconds,
                eval_overhead=(self.eval_seconds / self.train_seconds
                               if self.train_seconds else None),
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
        memory = instantiate(cfg.memory, device=device, seed=cfg.seed, run_dir=str(self.run_dir))
        method = instantiate(
            cfg.method, model=model, optimizer=instantiate(cfg.optimizer), memory=memory,
            preprocess=preprocess, class_mask=class_mask, scenario=scenario,
        )
        counter.detach()
        counter.attach(model)  # again: a method may have added layers (LoRA)
        if hasattr(method, "bind_run"):  # methods with extra networks or output files
            method.bind_run(counter=counter, run_dir=self.run_dir)
        evaluator = Evaluator(stream, preprocess, class_mask, counter, device,
                              probe_size=cfg.eval.probe_size, batch_size=cfg.eval.batch_size,
                              seed=cfg.seed, precision=cfg.eval.precision)
        self.summary["device"] = str(device)
        batch_gen = torch.Generator().manual_seed(cfg.seed)
        every, train_every = cfg.eval.every, max(1, cfg.logger.train_every)

        def evaluate(score, continual=False):
            """Time goes to `eval_seconds` (continual probes) or `test_seconds` (test sets)."""
            t0 = time.perf_counter()
            model.eval()
            result = {s: acc.tolist() for s, acc in score(method.predict).items()}
            model.train()
            if continual:
                self.eval_seconds += time.perf_counter() - t0
            else:
                self.test_seconds += time.perf_counter() - t0
            return result

        def acc_rows(result, step_fields):
            return [
                {**step_fields, "eval_task": j, "accuracy": result[scenario][j],
                 **{f"acc_{s}": result[s][j] for s in result}}
                for j in range(len(result[scenario]))
            ]

        rows: dict[str, list] = {s: [] for s in stream.scenarios}
        curves: list[dict] = []  # continual-evaluation rows, for the stability-gap metrics
        step, first_task = 0, 0
        if self.checkpoint:
            ckpt = self.checkpoint
            method.load_state_dict(ckpt["method"])
            counter.train_flops, counter.eval_flops = ckpt["train_flops"], ckpt["eval_flops"]
            counter.components.update(ckpt.get("flop_components", {}))
            batch_gen.set_state(ckpt["batch_rng"])
            set_rng_state(ckpt["rng"])
            step, rows, random_init = ckpt["step"], ckpt["rows"], ckpt["random_init"]
            curves = ckpt["curves"]
            self.train_seconds, self.eval_seconds = ckpt["train_seconds"], ckpt["eval_seconds"]
            self.test_seconds = ckpt.get("test_seconds", 0.0)
            first_task = ckpt["task"] + 1
            self.summary["resumed_after_task"] = ckpt["task"]
            for task in stream.tasks[:first_task]:
                method.resume_task(task.to(device))
        else:
            random_init = evaluate(evaluator.full)
        t_start = time.perf_counter()
        for task in stream.tasks[first_task:]:
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
                    curve = evaluate(lambda p, n=task.id + 1: evaluator.probes(p, n), True)
                    curves += acc_rows(curve, {"step": step, "train_task": task.id})
                    self._log("log_curve_rows", curves[-len(curve[scenario]):])
            if loss_n:
                self._flush_train(step, task.id, loss_sum, loss_n, counter, t_start)
            self.console.end_task()
            method.after_task(task)
            self.train_seconds += (time.perf_counter() - t_task) - (self.eval_seconds - eval_before)
            result = evaluate(evaluator.full)
            self._log("log_acc_rows", acc_rows(result, {"train_task": task.id}))
            for s in stream.scenarios:
                rows[s].append(result[s])
            save_checkpoint(self.run_dir, {
                "task": task.id, "method": method.state_dict(), "step": step, "rows": rows,
                "curves": curves,
                "random_init": random_init, "train_flops": counter.train_flops,
                "eval_flops": counter.eval_flops, "flop_components": dict(counter.components),
                "batch_rng": batch_gen.get_state(),
                "rng": rng_state(), "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "test_seconds": self.test_seconds,
            })
        matrices = {s: np.array(r) for s, r in rows.items()}
        for s, a in matrices.items():
            self.summary.update(all_metrics(a, np.array(random_init[s]), s))
        self.summary.update(eval_every=every, eval_probe_size=cfg.eval.probe_size,
                            eval_precision=evaluator.precision,
                            **stability_metrics(curves, stream.scenarios))
        if curves and cfg.eval.plot:
            from cl_bench.report.stability_plot import write_stability_plot

            write_stability_plot(self.run_dir)
        self.summary.update(
            train_flops=counter.train_flops,
            eval_flops=counter.eval_flops,
            memory_bytes=memory.nbytes,
            steps=step,
            train_seconds=self.train_seconds,
            eval_seconds=self.eval_seconds,
            test_seconds=self.test_seconds,
            **component_flops(counter),
        )
        self.summary.update(memory.stats())
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


def _sweep_group() -> str | None:
    """The sweep directory's name when this run is a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run one experiment into `run_dir` and return its summary row.

    With `skip_done=true`, an earlier run with the same run id under `output_root` is
    reused: a completed one is skipped, an unfinished one is resumed in its own directory
    from its last per-task checkpoint; the fresh `run_dir` is then removed.
    """
    if cfg.skip_done:
        rid = run_id(cfg)
        here = Path(run_dir).resolve()
        for previous, summary in find_runs(cfg.output_root, rid):
            if previous.resolve() == here:
                continue
            shutil.rmtree(run_dir, ignore_errors=True)
            console = ConsoleLogger(cfg.logger.console).console
            if summary.get("status") == "completed":
                console.print(f"skip_done: run {rid} already completed in {previous}")
                return summary
            console.print(f"skip_done: resuming run {rid} in {previous}")
            return Run(cfg, previous, resume=True).execute()
    return Run(cfg, run_dir).execute()
