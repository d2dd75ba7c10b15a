"""The `clbench` command itself: config errors, run directories, multirun, signals, W&B."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cl_bench.cli import CONF_DIR
from conftest import compose_config

CLI = [sys.executable, "-m", "cl_bench.cli"]


def clbench(args, cwd, env=None, **kw):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def test_misspelled_group_option_fails_naming_it(tmp_path):
    result = clbench(["method=err"], tmp_path)
    assert result.returncode != 0
    assert "method/err" in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_misspelled_key_fails_naming_it(tmp_path):
    result = clbench(["budget.epoch=2"], tmp_path)
    assert result.returncode != 0
    assert "budget.epoch" in result.stderr + result.stdout


def test_help_lists_the_option_groups_of_conf_not_the_schemas(tmp_path):
    result = clbench(["method=er", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    listed = result.stdout.split("== Option groups")[1].split("== Config")[0]
    groups = {line.split(":")[0] for line in listed.splitlines()[1:] if line[:1].isalnum()}
    user = {"benchmark", "model", "method", "memory", "optimizer", "budget", "eval", "logger",
            "experiment", "hydra/launcher"}
    every = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()
             and p.name not in ("hydra", "study")}  # study/: clbench-study's, not a run's
    assert user <= groups and groups == every | {"hydra/launcher"}  # a new group shows up
    assert "schema" not in result.stdout
    assert " er*," in listed and " reservoir*," in listed  # the choices, overrides included
    assert "replay_batch_size: 10" in result.stdout  # and the composed config


def test_help_with_a_misspelled_group_option_fails_without_a_traceback(tmp_path):
    result = clbench(["method=err", "--help"], tmp_path)
    assert result.returncode != 0
    assert "method/err" in result.stderr and "Traceback" not in result.stderr


def test_ill_typed_value_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="replay_batch_size"):
        compose_config(["method=er", "method.replay_batch_size=ten"])


def test_replay_method_brings_its_memory_unless_overridden():
    assert compose_config(["method=er"]).memory.name == "reservoir"
    cfg = compose_config(["method=er", "memory=class_balanced", "memory.size=20"])
    assert cfg.memory.name == "class_balanced" and cfg.memory.size == 20
    assert compose_config([]).memory.name == "none"


def test_runs_started_together_get_distinct_directories(tmp_path):
    args = ["budget.iters=3", "eval.every=0", "logger.console=false"]
    procs = [subprocess.Popen(CLI + args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    dirs = sorted(tmp_path.glob("outputs/runs/*/*"))
    assert len(dirs) == 2
    assert all((d / "summary.csv").is_file() for d in dirs)
    assert all("_digits_finetune_" in d.name for d in dirs)


def test_multirun_two_seeds_two_run_dirs(tmp_path):
    result = clbench(["-m", "seed=0,1", "budget.iters=5", "eval.every=0",
                      "logger.console=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "sweep").glob("*/summary.csv")))
    assert sorted(rows.seed) == [0, 1]
    assert (rows.status == "completed").all()
    assert rows.run_id.nunique() == 2


def test_missing_dataset_exits_nonzero_and_records_failure(tmp_path):
    result = clbench(["benchmark=split_cifar10", f"data.root={tmp_path}",
                      f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode != 0
    assert "cifar10" in result.stderr and "data.root" in result.stderr
    summary = pd.read_csv(tmp_path / "run" / "summary.csv").iloc[0]
    assert summary.status == "failed" and "not found" in summary.error


def test_sigterm_marks_the_run_interrupted(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["budget.epochs=100000", "logger.console=false",
                                   f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run_dir / "train.csv").is_file() or len(
            (run_dir / "train.csv").read_text().splitlines()) < 3:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "Traceback" not in proc.stderr.read().decode()
    summary = pd.read_csv(run_dir / "summary.csv").iloc[0]
    assert summary.status == "interrupted" and "SIGTERM" in summary.error
    assert (run_dir / "error.txt").read_text().startswith("interrupted: interrupted by SIGTERM")
    train = pd.read_csv(run_dir / "train.csv")  # rows written so far are whole
    assert train.notna().all().all() and len(train) >= 2


def test_wandb_logger_runs_offline_without_an_account(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")  # no API key, no ~/.netrc
    result = subprocess.run(
        CLI + ["logger=wandb", "budget.iters=5", "logger.console=false",
               f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    offline = list(Path(tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    assert pd.read_csv(tmp_path / "run" / "summary.csv").status[0] == "completed"


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
def test_joblib_launcher_runs_four_jobs_on_two_workers(tmp_path):
    result = clbench(["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
                      "budget.iters=5", "eval.every=0", "logger.console=false",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "n_jobs=2" in result.stdout + result.stderr
    summaries = sorted((tmp_path / "sweep").glob("*/summary.csv"))
    assert len({p.parent for p in summaries}) == 4
    rows = pd.concat(pd.read_csv(p) for p in summaries)
    assert sorted(rows.seed) == [0, 1, 2, 3] and (rows.status == "completed").all()


def test_mode_probe_is_skipped_unless_an_override_sets_hydra_mode(monkeypatch):
    from hydra._internal.hydra import Hydra

    from cl_bench import cli

    calls = []
    monkeypatch.setattr(Hydra, "get_mode", lambda self, name, overrides: calls.append(1) or 7)
    cli._skip_mode_probe()
    assert Hydra.get_mode(None, "config", ["seed=0,1", "method=er"]) is None and not calls
    assert Hydra.get_mode(None, "config", ["hydra.mode=MULTIRUN", "seed=0,1"]) == 7
    assert calls == [1]
