"""Stream modes (cl_bench/data/modes.py): online, task-free and blurry streams over the
offline digits benchmark (5 tasks x 2 classes), with spies on the method's calls."""

from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from cl_bench.budget.budget import Budget
from cl_bench.cli import CONF_DIR
from cl_bench.data.modes import blur
from cl_bench.data.stream import Task, TaskStream
from cl_bench.errors import ConfigError
from cl_bench.experiment import build_stream
from cl_bench.identity import run_id
from cl_bench.methods.base import Method
from cl_bench.plugins.base import Plugin
from cl_bench.tune import TuneRun
from conftest import clbench, compose_config, data_root, interrupt_and_resume

QUICK = ["eval.every=0", "deterministic=true"]


@pytest.fixture
def spy(monkeypatch):
    """Records every training batch (its `sample` positions, labels, task ids) with the
    training task it came in, and each call of the boundary phases."""
    record = {"batches": [], "calls": [], "seen": []}
    observe = Method.observe

    def observing(self, batch):
        record["batches"].append((batch.sample.cpu(), batch.y.cpu(), batch.task.cpu()))
        record["seen"].append((self.seen_mask.clone(), self.old_mask.clone()))
        return observe(self, batch)

    monkeypatch.setattr(Method, "observe", observing)
    for cls in (Method, Plugin):
        for phase in ("before_task", "after_task"):
            def called(self, *args, _name=f"{cls.__name__}.{phase}"):
                record["calls"].append(_name)
            monkeypatch.setattr(cls, phase, called)
    return record


def digits_sizes() -> list[int]:
    stream = build_stream(compose_config([f"data.root={data_root()}"]))
    return [len(t.train_y) for t in stream.tasks]


def test_online_uses_every_training_sample_exactly_once(run_job, spy):
    summary, _ = run_job("stream=online", "stream.batch_size=7", *QUICK)
    sizes = digits_sizes()
    per_task = defaultdict(list)
    start = 0
    for t, n in enumerate(sizes):  # batches come task by task; a task's steps cover n
        steps = -(-n // 7)
        for sample, _, task in spy["batches"][start: start + steps]:
            assert len(sample) <= 7 and (task == t).all()
            per_task[t].append(sample)
        start += steps
    assert start == len(spy["batches"]) == summary["steps"]
    for t, n in enumerate(sizes):
        assert torch.cat(per_task[t]).sort().values.tolist() == list(range(n))
    assert spy["calls"].count("Method.before_task") == len(sizes)


def test_task_free_never_announces_boundaries_but_tracks_seen_classes(run_job, spy):
    summary, run_dir = run_job("stream=task_free", "plugin=[soft_targets]", *QUICK)
    calls = Counter(spy["calls"])
    assert not any(k.endswith(("before_task", "after_task")) for k in calls)
    seen_labels = torch.zeros(10, dtype=torch.bool)
    for (_, y, _), (seen, old) in zip(spy["batches"], spy["seen"], strict=True):
        seen_labels[y] = True
        assert torch.equal(seen.cpu(), seen_labels)  # the batch's classes count before its step
        assert not old.any()  # no boundary: no class is old
    assert seen_labels.all()
    assert len(pd.read_csv(run_dir / "acc_matrix.csv")) == 5 * 5  # the benchmark's tasks


def small_stream(sizes) -> TaskStream:
    tasks = []
    for t, n in enumerate(sizes):
        y = torch.arange(2 * t, 2 * t + 2).repeat(n)[:n]
        x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1) + 50 * t
        tasks.append(Task(t, [2 * t, 2 * t + 1], x, y, x[:2], y[:2]))
    return TaskStream("small", tasks, 2 * len(sizes), (1, 1, 1), ("class_il",), (0.5,), (0.3,))


@pytest.mark.parametrize("width", [0.1, 0.25, 0.5])
def test_blurry_moves_exactly_width_over_two_of_each_task_across_each_boundary(width):
    sizes = [40, 60, 100, 80]
    stream = small_stream(sizes)
    blurred = blur(stream, width, seed=3)
    moved = [int(width / 2 * n + 0.5) for n in sizes]
    for t, seg in enumerate(blurred.tasks):
        counts = Counter(seg.train_task.tolist())
        expected = {t: sizes[t] - moved[t] * ((t > 0) + (t < len(sizes) - 1))}
        if t > 0:
            expected[t - 1] = moved[t - 1]
        if t < len(sizes) - 1:
            expected[t + 1] = moved[t + 1]
        assert counts == expected
        # labels and images travel with their task id; test sets and classes stay put
        assert torch.equal(seg.train_y // 2, seg.train_task)
        assert torch.equal(seg.test_y, stream.tasks[t].test_y) and seg.classes == [2 * t,
                                                                                   2 * t + 1]
    every = torch.cat([s.train_x.flatten() for s in blurred.tasks]).sort().values
    assert torch.equal(every, torch.cat([s.train_x.flatten() for s in stream.tasks]).sort().values)
    assert blur(stream, 0.0, seed=3) is stream


def test_blurry_run_trains_the_moved_samples_with_their_own_task_ids(run_job, spy):
    run_job("stream=blurry", "stream.width=0.3", *QUICK)
    sizes = digits_sizes()
    last = len(sizes) - 1
    moved = [int(0.15 * n + 0.5) for n in sizes]
    tasks = torch.cat([task for _, _, task in spy["batches"]])
    labels = torch.cat([y for _, y, _ in spy["batches"]])
    assert torch.equal(labels // 2, tasks)  # each sample keeps its own task id
    begin = 0
    for t, n in enumerate(sizes):  # one epoch per segment: its samples are contiguous
        expected = {t: n - moved[t] * ((t > 0) + (t < last))}
        if t > 0:
            expected[t - 1] = moved[t - 1]
        if t < last:
            expected[t + 1] = moved[t + 1]
        end = begin + sum(expected.values())
        assert Counter(tasks[begin:end].tolist()) == expected
        begin = end
    assert begin == len(tasks)
    assert spy["calls"].count("Method.before_task") == len(sizes)  # at the segment ends
    # the classes of task 1 met in segment 0 count as seen there (label tracking)
    seen, _ = spy["seen"][sizes[0] // 10 - 1]
    assert seen[2:4].all()


def test_task_stream_draws_the_budgets_batches_and_announces_every_boundary(run_job, spy):
    run_job("stream=task", "budget.epochs=2", "budget.batch_size=16", "plugin=[soft_targets]",
            *QUICK)
    budget, gen = Budget(batch_size=16, epochs=2), torch.Generator().manual_seed(0)
    expected = [idx for t, n in enumerate(digits_sizes())
                for idx in budget.batches(n, gen, "cpu", t)]
    assert len(spy["batches"]) == len(expected)
    for (sample, _, _), idx in zip(spy["batches"], expected, strict=True):
        assert torch.equal(sample, idx)
    assert spy["calls"] == ["Plugin.before_task", "Method.before_task",
                            "Method.after_task", "Plugin.after_task"] * 5


def test_default_stream_leaves_run_ids_as_they_were():
    cfg = compose_config([f"data.root={data_root()}", "method=er"])
    before = cfg.copy()
    with open_dict(before):
        del before["stream"]
    assert run_id(cfg) == run_id(before)
    assert run_id(compose_config([f"data.root={data_root()}", "method=er",
                                  "stream=online"])) != run_id(cfg)
    assert run_id(compose_config([f"data.root={data_root()}", "method=er",
                                  "stream.batch_size=5"])) != run_id(cfg)


@pytest.mark.parametrize("args, part, stream", [
    (["method=icarl", "memory=herding", "memory.size=50"], "method=icarl", "task_free"),
    (["plugin=[ewc]"], "plugin EWC", "task_free"),
    (["method=joint"], "method=joint", "online"),
    (["method=er_ss"], "method=er_ss", "blurry"),
])
def test_unsupported_stream_stops_before_training(args, part, stream, monkeypatch, capsys,
                                                  tmp_path):
    observe = Method.observe
    monkeypatch.setattr(Method, "observe", lambda self, b: pytest.fail("it trained"))
    code, out = clbench([*args, f"stream={stream}", "eval.every=0", "logger.console=false",
                         f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    monkeypatch.setattr(Method, "observe", observe)
    assert code != 0 and "Traceback" not in out
    assert f"{part} does not support stream={stream}" in out


def test_bad_stream_settings_name_the_key(monkeypatch, capsys, tmp_path):
    for i, (args, says) in enumerate((
            (["stream=blurry", "stream.width=1.5"], "stream.width must be in"),
            (["stream=online", "stream.batch_size=0"], "stream.batch_size must"),
            (["stream=online", f"budget.match={tmp_path}"], "drop budget.match"),
            (["stream=online", "budget.epochs=3"], "set budget.epochs=1"),
            (["stream=online", "budget.iters=5"], "set budget.iters=null"),
            (["stream=task", "stream.batch_size=7"], "stream.batch_size=7 is read by"))):
        code, out = clbench([*args, "eval.every=0", "logger.console=false",
                             f"hydra.run.dir={tmp_path / str(i)}"], monkeypatch, capsys)
        assert code != 0 and says in out and "Traceback" not in out


def test_anytime_accuracy_is_the_mean_of_the_curve_rows(run_job):
    summary, run_dir = run_job("stream=online", "eval.every=9", "eval.probe_size=20")
    curves = pd.read_csv(run_dir / "curves.csv")
    assert len(curves) > 5 * 3
    assert summary["anytime_acc_class_il"] == pytest.approx(curves["accuracy"].mean(),
                                                            abs=1e-9)
    assert summary["anytime_acc_task_il"] == pytest.approx(curves["acc_task_il"].mean(),
                                                           abs=1e-9)


def test_task_free_run_resumes_with_its_seen_classes(tmp_path, monkeypatch, spy):
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, Method,
        ["stream=blurry", "stream.boundaries=false",
         "method=er", "memory=reservoir", "memory.size=50", "eval.every=0"], stop_at=70)
    n = ref["steps"]
    resumed = spy["seen"][n + 69:]  # after the reference and the interrupted run's steps
    assert 0 < len(resumed) < n  # from the last checkpoint (a task end) on
    for (seen, old), (seen_ref, old_ref) in zip(resumed, spy["seen"][n - len(resumed): n],
                                                strict=True):
        assert torch.equal(seen, seen_ref) and torch.equal(old, old_ref)


def test_tune_refuses_other_stream_modes(tmp_path):
    with pytest.raises(ConfigError, match="stream=online: clbench-tune trains task by task"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("tune", overrides=[f"data.root={data_root()}", "stream=online"])
        TuneRun(cfg, tmp_path)
