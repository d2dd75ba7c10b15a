"""End-to-end runs: compose a config, run a small job, check the files and the numbers."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import needs_mnist

FILES = ["acc_matrix.csv", "curves.csv", "train.csv", "summary.csv", "summary.json"]


def test_default_run_writes_consistent_files(run_job):
    summary, run_dir = run_job()
    for name in FILES:
        assert (run_dir / name).is_file(), name
    acc = pd.read_csv(run_dir / "acc_matrix.csv")
    assert len(acc) == 5 * 5
    last = acc[acc.train_task == 4]
    assert summary["acc_class_il"] == pytest.approx(last.acc_class_il.mean())
    assert summary["acc_task_il"] == pytest.approx(last.acc_task_il.mean())
    assert (acc.accuracy == acc.acc_class_il).all()  # the run's own scenario is class-IL
    # finetune in class-IL forgets the old tasks completely; task-IL keeps most of them
    assert summary["acc_class_il"] < 0.3 and summary["acc_task_il"] > 0.8
    assert summary["status"] == "completed" and summary["error"] == ""

    # 1 epoch over 1442 digits through MLP 64-400-400-10: FLOPs per sample by hand
    per_sample = 2 * (64 * 400 + 400 * 400 + 400 * 10) + 2 * 64 * 400 + 4 * (400 * 400 + 400 * 10)
    assert summary["train_flops"] == 1442 * per_sample
    train = pd.read_csv(run_dir / "train.csv")
    assert train.flops_cumulative.is_monotonic_increasing
    assert train.flops_cumulative.iloc[-1] == summary["train_flops"]
    assert summary["eval_flops"] > 0

    curves = pd.read_csv(run_dir / "curves.csv")
    assert (curves.step % 50 == 0).all() and len(curves) > 0
    # at a curve point during task t, tasks 0..t are probed
    for (_step, task), rows in curves.groupby(["step", "train_task"]):
        assert sorted(rows.eval_task) == list(range(task + 1))

    on_disk = json.loads((run_dir / "summary.json").read_text())
    row = pd.read_csv(run_dir / "summary.csv").iloc[0]
    assert on_disk["run_id"] == row.run_id == summary["run_id"]
    for key in ("benchmark", "method", "memory", "model", "seed", "budget.epochs",
                "optimizer.lr", "git_commit", "torch_version", "clbench_version"):
        assert key in on_disk


def test_run_id_is_a_function_of_the_config(run_job):
    a, _ = run_job("budget.iters=5", "eval.every=0")
    b, _ = run_job("budget.iters=5", "eval.every=0")
    c, _ = run_job("budget.iters=5", "eval.every=0", "seed=1")
    assert a["run_id"] == b["run_id"] != c["run_id"]


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
def test_joint_is_the_upper_bound(run_job):
    joint, _ = run_job("method=joint")
    finetune, _ = run_job("method=finetune")
    assert joint["acc_class_il"] > finetune["acc_class_il"] + 0.5


def test_task_il_training_masks_to_the_task(run_job):
    summary, run_dir = run_job("scenario=task_il")
    acc = pd.read_csv(run_dir / "acc_matrix.csv")
    assert (acc.accuracy == acc.acc_task_il).all()
    assert summary["acc_task_il"] > 0.9


def test_er_on_digits_beats_finetune(run_job):
    er, _ = run_job("method=er", "memory.size=100", "budget.epochs=2")
    ft, _ = run_job("method=finetune", "budget.epochs=2")
    assert er["acc_class_il"] > ft["acc_class_il"] + 0.3
    assert er["memory_bytes"] > 100 * 64  # 100 uint8 8x8 images plus labels


def test_flop_cap_stops_each_task(run_job):
    full, _ = run_job("eval.every=0")
    # a cap of a tenth of one task's share: each task stops after ~1/10 of its steps
    cap = full["train_flops"] / 5 / 10
    capped, _ = run_job("eval.every=0", f"budget.flops_per_task={cap:.0f}")
    assert 0.09 * full["train_flops"] < capped["train_flops"] < 0.13 * full["train_flops"]
    assert capped["steps"] < full["steps"] / 7


def test_unsupported_scenario_fails_with_a_clear_message(run_job, tmp_path):
    with pytest.raises(ValueError, match="scenario=class_il is not available"):
        run_job("benchmark=permuted_mnist", "benchmark.dataset=digits", "scenario=class_il")
    summary = pd.read_csv(tmp_path / "run0" / "summary.csv").iloc[0]
    assert summary.status == "failed" and "class_il" in summary.error


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
@needs_mnist
def test_er_beats_finetune_on_split_mnist(run_job):
    """A short-budget version of the issue's acceptance (1 epoch: ACC >= 0.80)."""
    common = ["benchmark=split_mnist", "budget.iters=400", "eval.every=0"]
    er, run_dir = run_job("method=er", "memory=reservoir", "memory.size=500", *common)
    ft, _ = run_job("method=finetune", *common)
    assert er["acc_class_il"] >= 0.70
    assert er["acc_class_il"] - ft["acc_class_il"] >= 0.35
    assert er["acc_task_il"] >= 0.95
    acc = pd.read_csv(run_dir / "acc_matrix.csv")
    a = acc.pivot(index="train_task", columns="eval_task", values="acc_class_il").to_numpy()
    assert np.allclose(np.diag(a), np.diag(a).clip(min=0.9))  # each task learned when trained


@pytest.mark.slow
@needs_mnist
def test_split_mnist_acceptance_one_epoch(run_job):
    """The issue's acceptance: 1 epoch/task, ER with a 500-sample reservoir."""
    er, _ = run_job("benchmark=split_mnist", "method=er", "memory.size=500")
    ft, _ = run_job("benchmark=split_mnist", "method=finetune")
    assert er["acc_class_il"] >= 0.80
    assert er["acc_class_il"] - ft["acc_class_il"] >= 0.40
    assert er["acc_task_il"] >= 0.97


def test_a_diverging_loss_fails_the_run_naming_step_and_task(run_job, tmp_path):
    with pytest.raises(FloatingPointError, match=r"steps \d+-\d+ \(task 0\)"):
        run_job("optimizer.lr=1e6", "eval.every=0")
    summary = json.loads(next(tmp_path.glob("run*/summary.json")).read_text())
    assert summary["status"] == "failed" and "lower optimizer.lr" in summary["error"]


@pytest.mark.parametrize("override, key", [
    ("eval.every=-1", "eval.every"), ("budget.iters=0", "budget.iters"),
    ("budget.flops_per_task=-1", "budget.flops_per_task"),
    ("eval.probe_size=-3", "eval.probe_size"),
    ("method=er method.replay_batch_size=-2", "method.replay_batch_size"),
])
def test_values_that_make_no_sense_fail_naming_the_key(run_job, override, key):
    # (a constructor's ValueError reaches the user inside Hydra's InstantiationException)
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        run_job(*override.split())


@pytest.mark.parametrize("method", ["packnet", "hat"])
def test_a_task_il_method_refused_in_class_il_names_the_scenario_to_use(run_job, method):
    with pytest.raises(Exception, match=f"method={method} .*run it with scenario=task_il"):
        run_job(f"method={method}", "budget.iters=1")
