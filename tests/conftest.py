"""Shared fixtures: compose a config like the CLI does and run a small job in-process."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR  # registers the schemas and resolvers, as the CLI does
from cl_bench.experiment import run_experiment

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(os.environ.get("CLBENCH_DATA", REPO.parent / "shared" / "data")).resolve()


def has_dataset(folder: str) -> bool:
    return (data_root() / folder).is_dir()


needs_mnist = pytest.mark.skipif(
    not has_dataset("MNIST"),
    reason=f"MNIST not found under {data_root()} (set CLBENCH_DATA to the data root)",
)


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
