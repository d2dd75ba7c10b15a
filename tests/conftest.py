"""Shared fixtures: compose a config like the CLI does and run a small job in-process."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR, main  # registers the schemas and resolvers, as the CLI does
from cl_bench.data.batch import Batch
from cl_bench.data.stream import Task, TaskStream
from cl_bench.experiment import run_experiment

REPO = Path(__file__).resolve().parent.parent

# One torch thread per test process (CLBENCH_TEST_THREADS=N for more): on a busy machine
# torch's default of one thread per core makes a tiny run many times slower; subprocesses
# that the tests start inherit OMP_NUM_THREADS.
THREADS = int(os.environ.get("CLBENCH_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


def data_root() -> Path:
    return Path(os.environ.get("CLBENCH_DATA", REPO.parent / "shared" / "data")).resolve()


def has_dataset(folder: str) -> bool:
    return (data_root() / folder).is_dir()


needs_mnist = pytest.mark.skipif(
    not has_dataset("MNIST"),
    reason=f"MNIST not found under {data_root()} (set CLBENCH_DATA to the data root)",
)


def tiny_stream() -> TaskStream:
    """Two tasks of two classes, 60 random 4x4 images each, with a class-dependent pixel."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(2):
        y = torch.arange(2 * t, 2 * t + 2).repeat(30)
        x = torch.randint(0, 256, (60, 1, 4, 4), generator=gen, dtype=torch.uint8)
        x[:, 0, 0, 0] = (y * 60).to(torch.uint8)  # a class-dependent pixel: learnable
        tasks.append(Task(t, [2 * t, 2 * t + 1], x, y, x, y))
    return TaskStream("tiny", tasks, 4, (1, 4, 4), ("class_il", "task_il"), (0.5,), (0.3,))


def batch_of(task, s=0):
    """The `s`-th batch of 10 training samples of `task`."""
    idx = torch.arange(s * 10, s * 10 + 10)
    return Batch(task.train_x[idx], task.train_y[idx], torch.full((10,), task.id))


def train_task(method, task, steps=5):
    """`steps` batches of `task` through the method's runner-facing calls."""
    method.begin_task(task)
    for s in range(steps):
        method.observe(batch_of(task, s))
    method.end_task(task)


def clbench(args, monkeypatch, capsys) -> tuple[int, str]:
    """Runs `clbench ARGS` in this process: (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["clbench", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture
def run_job(tmp_path):
    """run_job("method=er", ...) -> (summary, run_dir); console output off."""
    counter = itertools.count()

    def _run(*overrides: str):
        cfg = compose_config(
            [f"data.root={data_root()}", "logger.console=false", *overrides]
        )
        run_dir = tmp_path / f"run{next(counter)}"
        return run_experiment(cfg, run_dir), run_dir

    return _run


def interrupt_and_resume(tmp_path, monkeypatch, method_cls, overrides, stop_at: int):
    """Runs `overrides` once through, and once stopped (KeyboardInterrupt) at the
    `stop_at`-th `method_cls.observe` call and resumed from its last checkpoint; asserts
    both give the same accuracy matrix and returns (resumed summary, reference summary)."""
    from cl_bench.experiment import Run

    cfg = compose_config([f"data.root={data_root()}", "logger.console=false",
                          "deterministic=true", *overrides])
    ref = Run(cfg, tmp_path / "ref").execute()
    observe, calls = method_cls.observe, []

    def interrupting(self, *args):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return observe(self, *args)

    monkeypatch.setattr(method_cls, "observe", interrupting)
    with pytest.raises(KeyboardInterrupt):
        Run(cfg, tmp_path / "run").execute()
    monkeypatch.setattr(method_cls, "observe", observe)
    summary = Run(cfg, tmp_path / "run", resume=True).execute()
    assert summary["resumed_after_task"] >= 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "acc_matrix.csv"),
                                  pd.read_csv(tmp_path / "ref" / "acc_matrix.csv"))
    return summary, ref
