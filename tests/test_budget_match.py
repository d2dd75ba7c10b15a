"""budget.match: a run trains each task to the training FLOPs a reference run spent on it."""

import csv
import json

import pandas as pd
import pytest
import torch

from cl_bench.budget.budget import Budget, reference_flops
from cl_bench.errors import ConfigError


def task_flops(run_dir, column="flops_cumulative") -> list[int]:
    """Training FLOPs per task from train.csv: each task's last cumulative minus the one
    before."""
    ends = pd.read_csv(run_dir / "train.csv").groupby("train_task")[column].last()
    return ends.diff().fillna(ends).astype(int).tolist()


@pytest.mark.parametrize("match_flops", ["theoretical", "executed"])
def test_matched_run_spends_the_reference_flops_per_task(run_job, match_flops):
    ref, ref_dir = run_job("budget.iters=20", "eval.every=0")
    # cheaper steps: batch 7 through a 64-300-10 MLP instead of 10 through 64-400-400-10
    run, run_dir = run_job("budget.batch_size=7", "model.hidden=[300]", "eval.every=0",
                           f"budget.match={ref_dir}", f"budget.match_flops={match_flops}")
    per_sample = 2 * (64 * 300 + 300 * 10) + 2 * 64 * 300 + 4 * 300 * 10
    step = 7 * per_sample
    column = {"theoretical": "flops_cumulative", "executed": "flops_dense_cumulative"}
    targets, spent = task_flops(ref_dir, column[match_flops]), task_flops(run_dir,
                                                                         column[match_flops])
    assert len(spent) == len(targets) == 5
    for got, want in zip(spent, targets, strict=True):
        assert abs(got - want) <= step
    assert abs(run["train_flops"] - ref["train_flops"]) <= step
    assert run["steps"] > 5 * 20  # more, cheaper steps than the reference's 20 per task
    assert run["budget_match"] == str(ref_dir.resolve())
    assert run["budget.match"] == str(ref_dir)


def write_reference(run_dir, ends, dense_ends=None, status="completed", skip=()):
    """A reference run directory whose tasks end at the cumulative FLOPs `ends` (two
    train.csv rows a task; none for the tasks in `skip`)."""
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    (run_dir / "acc_matrix.csv").write_text(
        "train_task,eval_task,accuracy\n" + "".join(f"{t},0,0.5\n" for t in range(len(ends))))
    columns = ["step", "train_task", "loss", "flops_cumulative", "seconds"]
    with open(run_dir / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ([] if dense_ends is None else ["flops_dense_cumulative"]))
        for t, end in enumerate(ends):
            dense = [] if dense_ends is None else [dense_ends[t]]
            if t not in skip:
                writer.writerow([2 * t + 1, t, 1.0, end - 1, 0.1, *dense])
                writer.writerow([2 * t + 2, t, 1.0, end, 0.2, *dense])
    return run_dir


@pytest.mark.parametrize("match_flops, steps", [("theoretical", [34, 16]),
                                                ("executed", [30, 15])])
def test_budget_compares_the_count_match_flops_names(tmp_path, match_flops, steps):
    ref = write_reference(tmp_path / "ref", [1000, 1500], dense_ends=[3000, 4500])
    budget = Budget(batch_size=4, match=str(ref), match_flops=match_flops)
    assert budget.steps_per_task(20) is None
    gen = torch.Generator().manual_seed(0)
    taken = []
    for task in range(2):
        n = 0
        for _ in budget.batches(20, gen, task=task):  # 5 steps an epoch: several epochs
            budget.counter.train_flops += 30  # a sparse step: 30 theoretical, 100 executed
            budget.counter.train_flops_dense += 100
            n += 1
        taken.append(n)
    assert taken == steps  # stops before the first step that starts at or past the target


def test_reference_flops_per_task_and_a_task_without_steps(tmp_path):
    ref = write_reference(tmp_path / "ref", [1000, 1000, 1500], skip=(1,))
    assert reference_flops(ref) == [1000, 1000, 1500]


def test_bad_references_fail_naming_budget_match_and_the_path(tmp_path):
    def fails(path, *says, **kwargs):
        with pytest.raises(ConfigError) as err:
            Budget(match=str(path), **kwargs).check_tasks(2)
        for text in ("budget.match", str(path), *says):
            assert text in str(err.value)

    fails(tmp_path / "nowhere", "no such directory")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "summary.json")
    fails(write_reference(tmp_path / "failed", [10, 20], status="failed"), "not completed")
    (tmp_path / "failed" / "summary.json").write_text('{"status": "completed"}')
    (tmp_path / "failed" / "train.csv").unlink()
    fails(tmp_path / "failed", "train.csv")
    fails(write_reference(tmp_path / "one", [10]), "1 tasks")
    fails(write_reference(tmp_path / "old", [10, 20]), "flops_dense_cumulative",
          "budget.match_flops=theoretical", match_flops="executed")
    with pytest.raises(ConfigError, match="budget.match_flops"):
        Budget(match_flops="dense")
    with pytest.raises(ConfigError, match="budget.flops_per_task=null"):
        Budget(match=str(tmp_path / "old"), flops_per_task=10)


def test_an_epoch_without_flops_fails_instead_of_looping(tmp_path):
    budget = Budget(batch_size=4, match=str(write_reference(tmp_path / "ref", [10, 20])))
    with pytest.raises(ConfigError, match="spent no training FLOPs"):
        for _ in budget.batches(20, torch.Generator(), task=0):
            pass
