"""`clbench-tune` (De Lange et al.'s continual hyper-parameter framework) and the validation
split it tunes on (`benchmark.val_fraction`)."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR
from cl_bench.data.stream import Task, TaskStream, carve_validation
from cl_bench.experiment import Run, build_stream
from cl_bench.methods.finetune import Finetune
from cl_bench.plugins.l2_pull import L2Pull
from cl_bench.tune import (
    KnobDecay,
    TuneRun,
    check_settings,
    declared_knobs,
    knob_values,
    lr_candidates,
    plasticity_search,
    stability_decay,
)
from conftest import compose_config, data_root, needs_mnist


def compose_tune(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("tune", overrides=[f"data.root={data_root()}", "logger.console=false",
                                          *overrides])


# -- the decision logic on mocked accuracies ----------------------------------------------
def test_first_task_tries_the_extra_lrs_before_the_grid():
    assert lr_candidates(0, [1e-2, 1e-3], [1e-1, 5e-2]) == [1e-1, 5e-2, 1e-2, 1e-3]
    assert lr_candidates(1, [1e-2, 1e-3], [1e-1, 5e-2]) == [1e-2, 1e-3]


def test_plasticity_search_takes_the_best_lr_and_never_a_diverged_one():
    accs = {1e-1: float("nan"), 1e-2: 0.9, 1e-3: 0.95, 1e-4: 0.95}
    best, seen = plasticity_search(list(accs), accs.get)
    assert best == 2  # the first of the two best
    assert math.isnan(seen[0]) and seen[1:] == [0.9, 0.95, 0.95]
    with pytest.raises(ValueError, match="tune.lr_grid"):
        plasticity_search([1.0, 0.5], lambda lr: float("nan"))


def test_one_knob_decays_until_the_threshold_is_met():
    calls = []

    def evaluate(knobs):  # accuracy rises as the penalty falls below 10
        calls.append(knobs["plugins.ewc.strength"])
        return 0.5 if knobs["plugins.ewc.strength"] > 10 else 0.85

    tried = stability_decay({"plugins.ewc.strength": 100.0}, evaluate, a_ft=1.0,
                            threshold=0.2, decay=0.5, max_attempts=10)
    assert calls == [100, 50, 25, 12.5, 6.25]  # 0.85 >= (1 - 0.2) * 1.0 at 6.25
    assert tried[-1] == ({"plugins.ewc.strength": 6.25}, 0.85)


def test_a_first_attempt_that_meets_the_threshold_is_kept_at_its_start_value():
    tried = stability_decay({"method.alpha": 3.0}, lambda k: 0.8, a_ft=1.0, threshold=0.2,
                            decay=0.5, max_attempts=10)
    assert tried == [({"method.alpha": 3.0}, 0.8)]  # >= is enough


def test_decay_stops_after_max_attempts_and_keeps_the_last():
    tried = stability_decay({"plugins.ewc.strength": 400.0}, lambda k: 0.1, a_ft=0.9,
                            threshold=0.2, decay=0.5, max_attempts=4)
    assert [k["plugins.ewc.strength"] for k, _ in tried] == [400, 200, 100, 50]
    assert tried[-1][0] == {"plugins.ewc.strength": 50}  # kept, though below the threshold


def test_several_knobs_decay_one_at_a_time_then_jointly():
    tried = stability_decay({"method.alpha": 5.0, "method.beta": 2.0}, lambda k: 0.0,
                            a_ft=1.0, threshold=0.2, decay=0.5, max_attempts=8)
    assert [(k["method.alpha"], k["method.beta"]) for k, _ in tried] == [
        (5, 2), (2.5, 2), (5, 1), (2.5, 1),  # alpha alone, beta alone, both: new reference
        (1.25, 1), (2.5, 0.5), (1.25, 0.5), (0.625, 0.5)]
    schedule = KnobDecay({"a": 1.0, "b": 1.0, "c": 1.0}, 0.1)
    assert [schedule.decay() for _ in range(4)] == [
        {"a": 0.1, "b": 1.0, "c": 1.0}, {"a": 1.0, "b": 0.1, "c": 1.0},
        {"a": 1.0, "b": 1.0, "c": 0.1}, {"a": 0.1, "b": 0.1, "c": 0.1}]


def test_a_method_without_knobs_trains_once():
    assert stability_decay({}, lambda k: 0.0, 1.0, 0.2, 0.5, 10) == [({}, 0.0)]


@pytest.mark.parametrize("override, key", [
    ("tune.lr_grid=[]", "tune.lr_grid"), ("tune.lr_grid=[0.1,0]", "tune.lr_grid"),
    ("tune.first_task_extra_lrs=[-1.0]", "tune.first_task_extra_lrs"),
    ("tune.threshold=1.0", "tune.threshold"), ("tune.decay=1.0", "tune.decay"),
    ("tune.max_attempts=0", "tune.max_attempts"), ("tune.val_fraction=0", "tune.val_fraction"),
])
def test_settings_that_make_no_sense_fail_naming_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_settings(compose_tune([override]).tune)


def test_knobs_default_to_the_declared_ones_as_full_config_keys():
    cfg = compose_tune(["method=derpp", "plugin=[l2_pull]", "plugins.l2_pull.strength=7"])
    keys = declared_knobs(cfg)
    assert keys == ["method.alpha", "method.beta", "plugins.l2_pull.strength"]
    assert knob_values(cfg, keys) == {"method.alpha": 0.1, "method.beta": 0.5,
                                      "plugins.l2_pull.strength": 7.0}
    assert declared_knobs(compose_tune([])) == []  # finetune declares none
    with pytest.raises(ValueError, match=r"tune\.knobs: plugins\.ewc\.strength"):
        knob_values(cfg, ["plugins.ewc.strength"])  # no such plugin in this config


def test_the_tune_config_composes_over_an_experiment_and_rejects_unknown_keys():
    cfg = compose_tune(["experiment=three_scenarios_split", "scenario=task_il",
                        "plugin=[l2_pull]", "tune.lr_grid=[0.01,0.001]"])
    assert cfg.tune.lr_grid == [0.01, 0.001] and cfg.tune.threshold == 0.2
    assert cfg.budget.iters == 2000 and cfg.optimizer.lr == 0.001
    assert dict(compose_config([]).tune) == {}  # plain clbench: no tune settings
    with pytest.raises(Exception, match="tune.thresh"):
        compose_tune(["tune.thresh=0.1"])


def test_clbench_tune_help_shows_its_usage_and_settings(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cl_bench.tune", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: clbench-tune" in result.stdout
    assert "first_task_extra_lrs" in result.stdout and "max_attempts: 10" in result.stdout


# -- the validation split -----------------------------------------------------------------
def _stream(counts=((7, 13), (20, 10))) -> TaskStream:
    """Tasks of two classes with unequal counts; pixel 0 numbers the samples."""
    tasks, k = [], 0
    for t, (a, b) in enumerate(counts):
        y = torch.tensor([2 * t] * a + [2 * t + 1] * b)
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(t))]
        x = torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8)
        x[:, 0, 0, 0] = torch.arange(k, k + len(y))
        k += len(y)
        tasks.append(Task(t, [2 * t, 2 * t + 1], x, y, x[:5].clone(), y[:5].clone()))
    return TaskStream("toy", tasks, 4, (1, 2, 2), ("class_il", "task_il"), (0.5,), (0.3,))


def test_validation_split_is_stratified_disjoint_and_leaves_the_test_set_alone():
    stream = _stream()
    carved = carve_validation(stream, 0.3, seed=0)
    for before, task in zip(stream.tasks, carved.tasks, strict=True):
        for c in task.classes:
            n = int((before.train_y == c).sum())
            assert int((task.val_y == c).sum()) == round(0.3 * n)  # per class: 2/4, 6/3
            assert int((task.train_y == c).sum()) == n - round(0.3 * n)
        ids, ids_train, ids_val = (x[:, 0, 0, 0].tolist()
                                   for x in (before.train_x, task.train_x, task.val_x))
        assert not set(ids_train) & set(ids_val) and sorted(ids_train + ids_val) == ids
        # labels travel with their images; training keeps its order
        lookup = dict(zip(ids, before.train_y.tolist(), strict=True))
        assert task.val_y.tolist() == [lookup[i] for i in ids_val]
        assert task.train_y.tolist() == [lookup[i] for i in ids_train]
        assert ids_train == sorted(ids_train)
        assert task.test_x is before.test_x and task.test_y is before.test_y


def test_validation_split_is_deterministic_in_the_seed():
    a, b, c = (carve_validation(_stream(), 0.3, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x.val_x, y.val_x) for x, y in zip(a.tasks, b.tasks, strict=True))
    assert not all(torch.equal(x.val_x, y.val_x) for x, y in zip(a.tasks, c.tasks, strict=True))


def test_no_validation_split_leaves_the_stream_as_it_was():
    stream = _stream()
    assert carve_validation(stream, 0.0, seed=0) is stream
    assert all(t.val_x is None for t in build_stream(compose_config([])).tasks)


@pytest.mark.parametrize("fraction", ["1.0", "-0.1", "1.5"])
def test_a_fraction_outside_zero_one_fails_naming_the_key(fraction):
    with pytest.raises(ValueError, match=r"benchmark\.val_fraction"):
        build_stream(compose_config([f"benchmark.val_fraction={fraction}"]))


def test_every_benchmark_takes_val_fraction():
    stream = build_stream(compose_config(["benchmark.val_fraction=0.2"]))  # digits, offline
    task = stream.tasks[0]
    assert len(task.val_y) == pytest.approx(0.2 * (len(task.val_y) + len(task.train_y)), abs=1)
    for name in ("split_mnist", "permuted_mnist", "rotated_mnist", "split_cifar10",
                 "split_cifar100", "split_fmnist", "split_cifar100_features"):
        assert compose_config([f"benchmark={name}"]).benchmark.val_fraction == 0.0


# -- end to end ---------------------------------------------------------------------------
@needs_mnist
def test_tune_run_on_split_mnist_records_lr_and_strength_per_task(tmp_path, monkeypatch):
    seen = []  # what each attempt trained with
    train_task = Run._train_task

    def spy(self, parts, task, batch_gen):
        method = parts.method
        strength = [p.strength for p in method.plugins if isinstance(p, L2Pull)]
        seen.append((task.id, type(method), method.optimizer.param_groups[0]["lr"],
                     strength[0] if strength else None, len(task.train_y), len(task.val_y)))
        return train_task(self, parts, task, batch_gen)

    monkeypatch.setattr(Run, "_train_task", spy)
    cfg = compose_tune([
        "benchmark=split_mnist", "benchmark.n_tasks=2", "scenario=task_il", "optimizer=adam",
        "plugin=[l2_pull]", "plugins.l2_pull.strength=10000", "budget.epochs=null",
        "budget.iters=30", "budget.batch_size=64", "eval.every=10", "deterministic=true",
        "tune.lr_grid=[0.01,0.001]", "tune.first_task_extra_lrs=[0.05]",
        "tune.max_attempts=3"])
    summary = TuneRun(cfg, tmp_path).execute()
    assert summary["status"] == "completed" and summary["benchmark.val_fraction"] == 0.1

    with open(tmp_path / "tune_attempts.csv") as f:
        rows = list(csv.DictReader(f))
    key = "plugins.l2_pull.strength"
    assert list(rows[0]) == ["task", "phase", "attempt", "lr", key, "val_acc", "threshold",
                             "accepted", "diverged", "train_flops", "seconds"]
    assert len(rows) == len(seen) == summary["tune_trainings"]
    tune = json.loads((tmp_path / "summary.json").read_text())["tune"]
    assert sorted(tune) == ["0", "1"]
    start = 10000.0
    for t, lrs in ((0, [0.05, 0.01, 0.001]), (1, [0.01, 0.001])):
        ft = [r for r in rows if r["task"] == str(t) and r["phase"] == "finetune"]
        mt = [r for r in rows if r["task"] == str(t) and r["phase"] == "method"]
        assert [float(r["lr"]) for r in ft] == lrs
        [best] = [r for r in ft if r["accepted"] == "True"]
        assert float(best["val_acc"]) == max(float(r["val_acc"]) for r in ft)
        assert all(float(r["lr"]) == float(best["lr"]) for r in mt)  # phase 2 at lr*
        # the strength halves from the start value; only the last attempt is kept, and it
        # is the first to reach (1 - 0.2) A_ft* unless the attempts ran out
        assert [float(r[key]) for r in mt] == [start * 0.5 ** i for i in range(len(mt))]
        target = 0.8 * float(best["val_acc"])
        assert all(float(r["threshold"]) == pytest.approx(target) for r in mt)
        assert all(float(r["val_acc"]) < target for r in mt[:-1])
        assert mt[-1]["accepted"] == "True" and not any(r["accepted"] == "True" for r in mt[:-1])
        assert float(mt[-1]["val_acc"]) >= target or len(mt) == 3
        assert tune[str(t)] == {
            "lr": float(best["lr"]), key: float(mt[-1][key]), "val_acc": float(mt[-1]["val_acc"]),
            "finetune_val_acc": float(best["val_acc"]), "attempts": len(mt),
            "accepted": float(mt[-1]["val_acc"]) >= target}
        start = float(mt[-1][key])  # carried forward to the next task
        if t == 0:  # no anchor yet: the method's first attempt is the fine-tuning at lr*
            assert mt[0]["val_acc"] == best["val_acc"] and len(mt) == 1
        else:  # pinned to task 1's weights, the new head cannot learn: the knob decays
            assert len(mt) > 1 and float(mt[0]["val_acc"]) < target

    # each attempt trained what its row says: plain fine-tuning (no plugin) in phase 1,
    # the method with the row's strength in phase 2, at the row's lr, 90% of the data
    for (task_id, cls, lr, strength, n_train, n_val), row in zip(seen, rows, strict=True):
        assert task_id == int(row["task"]) and lr == float(row["lr"])
        assert cls is Finetune
        assert strength == (None if row["phase"] == "finetune" else float(row[key]))
        assert n_val == pytest.approx((n_train + n_val) / 10, abs=2)

    # the run directory is that of the kept trajectory
    acc = list(csv.DictReader(open(tmp_path / "acc_matrix.csv")))
    assert [(r["train_task"], r["eval_task"]) for r in acc] == [("0", "0"), ("0", "1"),
                                                               ("1", "0"), ("1", "1")]
    assert summary["steps"] == 60 and summary["train_flops"] < summary["tune_train_flops"]
    curves = list(csv.DictReader(open(tmp_path / "curves.csv")))
    assert [int(r["step"]) for r in curves if r["eval_task"] == "0"] == [10, 20, 30, 40, 50, 60]
