"""Runs many configurations of a comparison script, in worker processes when `jobs` > 1.

Each configuration is a list of Hydra overrides and a run directory; the result is the run's
summary dict; runs already completed in their directory are reused. Used by the table and
benchmark scripts, so a sweep can fill a many-core or GPU machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR
from cl_bench.experiment import Run, run_experiment


def run_one(overrides: list[str], run_dir: Path) -> dict:
    """The run's summary; a run already completed in `run_dir` is read back, not redone, and
    one interrupted there after a task's checkpoint resumes from it."""
    done = Path(run_dir) / "summary.json"
    summary = json.loads(done.read_text()) if done.is_file() else {}
    if summary.get("status") == "completed":
        return summary
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if (Path(run_dir) / "checkpoint.pt").is_file():
        return Run(cfg, Path(run_dir), resume=True).execute()
    return run_experiment(cfg, Path(run_dir))


def run_all(specs: list[tuple[list[str], Path]], jobs: int = 1) -> list[dict]:
    """Summaries of `specs` in their order; `jobs` worker processes (1: in this process)."""
    if jobs <= 1:
        return [run_one(o, d) for o, d in specs]
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be shared with forked workers
    threads = max(1, (os.cpu_count() or 1) // jobs)  # oversubscribed BLAS threads spin-wait
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        return list(pool.map(run_one, *zip(*specs, strict=True)))


def run_rows(rows: dict[str, list[str]], extra: list[str], seeds: list[int], out: Path,
             jobs: int = 1) -> dict[str, list[tuple[int, dict]]]:
    """(seed, summary) of every row x seed: the row's overrides plus `extra`, `seed=` and
    `logger.group=<row>` (the group `clbench-compare --by logger.group` labels), run in
    `out/<row>_seed<seed>`."""
    runs = [(name, seed) for name in rows for seed in seeds]
    specs = [([*rows[name], *extra, f"seed={seed}", f"logger.group={name}"],
              out / f"{name}_seed{seed}") for name, seed in runs]
    found: dict[str, list[tuple[int, dict]]] = {name: [] for name in rows}
    for (name, seed), summary in zip(runs, run_all(specs, jobs), strict=True):
        found[name].append((seed, summary))
    return found


def mean_sd(values: list[float]) -> str:
    """`mean ± std (per seed)` of a table cell."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    per_seed = " / ".join(f"{v:.1f}" for v in values)
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({per_seed})"
