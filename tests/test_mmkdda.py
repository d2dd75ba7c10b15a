"""MMKDDA (Han & Liu, EAAI 2022): the multi-scale distillation by hand, the mixing's
fraction and lambda, the meta update's outer step per tasks seen, the reduction to ER,
the teacher's FLOPs, and a real online split-MNIST run against finetuning."""

import functools
import math
import random

import pandas as pd
import pytest
import torch

from cl_bench.data.batch import Batch
from cl_bench.data.stream import Task, TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.mmkdda import MMKDDA, cutmix_box, mix, multiscale_distillation
from cl_bench.models.mlp import MLP
from conftest import compose_config, data_root, interrupt_and_resume, needs_mnist

PLAIN = dict(distill_weight=0.0, mix="none", inner_steps=1, outer_schedule="constant")


def four_tasks() -> TaskStream:
    """Four tasks of two classes, 40 random 4x4 images each, a class-dependent pixel."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(4):
        y = torch.arange(2 * t, 2 * t + 2).repeat(20)
        x = torch.randint(0, 256, (40, 1, 4, 4), generator=gen, dtype=torch.uint8)
        x[:, 0, 0, 0] = (y * 30).to(torch.uint8)
        tasks.append(Task(t, [2 * t, 2 * t + 1], x, y, x, y))
    return TaskStream("four", tasks, 8, (1, 4, 4), ("class_il",), (0.5,), (0.3,))


def build(stream, **options):
    torch.manual_seed(0)
    kw = {**PLAIN, **options}
    return MMKDDA(model=MLP((1, 4, 4), stream.n_classes, hidden=[8]),
                  memory=Reservoir(size=50), preprocess=Preprocess((0.5,), (0.3,), "cpu"),
                  optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                  class_mask=stream.class_mask(), scenario="class_il", **kw)


def batch_of(task, s=0):
    idx = torch.arange(s * 10, s * 10 + 10)
    return Batch(task.train_x[idx], task.train_y[idx], torch.full((10,), task.id))


def test_multiscale_distillation_equals_the_hand_computed_value():
    teacher_map = torch.randn(2, 1, 2, 4)
    h0 = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]])
    student_map = teacher_map + torch.stack([h0, torch.zeros(2, 4)]).unsqueeze(1)
    teacher_flat = torch.randn(2, 3)
    student_flat = teacher_flat + torch.tensor([[3.0, 4, 0], [0, 0, 0]])
    # sample 0 of the map level, scale 1: row means 2.5 6.5, column means 3 4 5 6; scale 2
    # (four 1x2 regions): row means 1.5 3.5 5.5 7.5, column means 1 .. 8; sample 1: zero
    sq = (2.5**2 + 6.5**2) + (9 + 16 + 25 + 36) + (1.5**2 + 3.5**2 + 5.5**2 + 7.5**2) + 204
    assert sq == 439.5
    args = ([student_map, student_flat], [teacher_map, teacher_flat], [1, 2])
    torch.testing.assert_close(multiscale_distillation(*args),
                               torch.tensor((math.sqrt(sq) / 2 + 5 / 2) / 2))
    torch.testing.assert_close(multiscale_distillation(*args, distance="squared"),
                               torch.tensor((sq / 2 + 25 / 2) / 2))
    # scale 1 alone: 48.5 + 86
    torch.testing.assert_close(multiscale_distillation(*args[:2], [1], "squared"),
                               torch.tensor((134.5 / 2 + 25 / 2) / 2))


def test_mixup_and_cutmix_mix_exactly_lambda():
    x, partner = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    mixed, weight = mix(x, partner, 0.3, "mixup", random.Random(0))
    assert weight == 0.3
    torch.testing.assert_close(mixed, 0.3 * x + 0.7 * partner)
    rng = random.Random(0)
    for lam in (0.05, 0.3, 0.5, 0.9, 0.999):
        mixed, weight = mix(torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8), lam, "cutmix", rng)
        pasted = mixed.mean((1, 2, 3))
        assert torch.all(pasted == 1 - weight)  # the label weight is the exact area kept
        rows, cols = mixed[0, 0].sum(1), mixed[0, 0].sum(0)  # one rectangle, same for all
        assert torch.equal(mixed, mixed[:1].expand_as(mixed))
        assert len(set(rows[rows > 0].tolist())) <= 1 and len(set(cols[cols > 0].tolist())) <= 1
    # unclipped (centred) box: sides int(8 sqrt(1 - lam))
    assert cutmix_box(0.75, 8, 8, type("R", (), {"uniform": lambda s, a, b: 4.0})()) == \
        (2, 6, 2, 6)


@pytest.mark.parametrize("partner", ["shuffle", "cross"])
def test_each_step_mixes_the_configured_fraction_with_the_drawn_lambda(partner, monkeypatch):
    stream = four_tasks()
    method = build(stream, mix="mixup", mix_fraction=0.5, mix_partner=partner)
    monkeypatch.setattr(method.rng, "betavariate", lambda a, b: 0.25)
    method.begin_task(stream.tasks[0])
    for s in range(3):
        method.observe(batch_of(stream.tasks[0], s))
    seen = []
    handle = method.model.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    method.observe(batch_of(stream.tasks[0], 3))
    handle.remove()
    joined, mixed = seen  # the joined batch (10 current + 10 replayed), then the mixed copies
    assert len(joined) == 20 and len(mixed) == 10  # round(0.5 x 20)
    pairs = 0.25 * joined.unsqueeze(1) + 0.75 * joined.unsqueeze(0)  # [a, b] = 0.25 a + 0.75 b
    for row in mixed:
        hits = (pairs - row).flatten(2).abs().amax(2) < 1e-6
        a, b = hits.nonzero()[0].tolist()
        if partner == "cross":
            assert (a < 10) != (b < 10)  # a current sample with a memory one, or vice versa


@pytest.mark.parametrize(("schedule", "gamma"), [
    ("exp", lambda t: math.exp(-2.0 * t / 4)), ("inverse", lambda t: 1 / t)])
def test_the_outer_step_follows_the_schedule_of_tasks_seen(schedule, gamma):
    stream = four_tasks()
    for t in range(1, 5):
        deltas = []
        for measured in ("constant", schedule):
            method = build(stream, inner_steps=2, outer_decay=2.0)
            for task in stream.tasks[:t]:
                method.begin_task(task)
                method.observe(batch_of(task, 0))  # something in memory, parameters moved
            method.outer_schedule = measured  # the same start for both
            start = [p.detach().clone() for p in method.model.parameters()]
            torch.manual_seed(1)
            method.observe(batch_of(stream.tasks[t - 1], 1))
            deltas.append([p.detach() - p0 for p, p0 in zip(method.model.parameters(), start,
                                                           strict=True)])
        assert method.outer_step() == pytest.approx(gamma(t))
        for inner, outer in zip(*deltas, strict=True):
            torch.testing.assert_close(outer, gamma(t) * inner, rtol=1e-5, atol=1e-7)


def test_meta_flops_are_the_later_inner_steps_and_the_interpolation():
    stream = four_tasks()
    method = build(stream, inner_steps=3, outer_schedule="exp")
    method.begin_task(stream.tasks[0])
    method.observe(batch_of(stream.tasks[0], 0))  # the memory is empty: 10 samples a pass
    step = 10 * (2 * 2 * (16 * 8 + 8 * 8) + 2 * 8 * 8)  # forward + dW, dX of the head
    n_params = sum(p.numel() for p in method.model.parameters())
    assert method.counter.components == {"meta": 2 * step + 3 * n_params}
    assert method.counter.train_flops == 3 * step + 3 * n_params


def test_the_teacher_is_the_previous_task_model_and_its_pass_is_counted():
    stream = four_tasks()
    method = build(stream, distill_weight=1.0)
    task0, task1 = stream.tasks[:2]
    method.begin_task(task0)
    for s in range(3):
        out = method.observe(batch_of(task0, s))
        assert "terms" not in out  # no teacher during the first task
    method.end_task(task0)
    assert all(torch.equal(p, q) for p, q in zip(method.teacher.parameters(),
                                                 method.model.parameters(), strict=True))
    method.begin_task(task1)
    out = method.observe(batch_of(task1, 0))
    assert out["terms"]["distill"] == 0  # student == teacher before the step
    assert method.counter.components["teacher"] == 20 * 2 * (16 * 8 + 8 * 8)  # forward only
    out = method.observe(batch_of(task1, 1))
    assert out["terms"]["distill"] > 0


def test_with_its_additions_off_it_is_er_bit_for_bit(run_job):
    common = ["stream=online", "memory=reservoir", "memory.size=100", "eval.every=20",
              "deterministic=true"]
    er, er_dir = run_job("method=er", *common)
    mm, mm_dir = run_job("method=mmkdda", "method.distill_weight=0", "method.mix=none",
                         "method.inner_steps=1", "method.outer_schedule=constant",
                         "method.outer_lr=1", *common)
    for name in ("acc_matrix.csv", "curves.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(mm_dir / name), pd.read_csv(er_dir / name))
    assert mm["train_flops"] == er["train_flops"]
    losses = [pd.read_csv(d / "train.csv")["loss"] for d in (mm_dir, er_dir)]
    assert losses[0].equals(losses[1])


def test_bad_values_and_streams_are_refused(run_job):
    stream = four_tasks()
    with pytest.raises(ConfigError, match="method.mix="):
        build(stream, mix="blend")
    with pytest.raises(ConfigError, match="method.mix_fraction"):
        build(stream, mix="mixup", mix_fraction=0)
    with pytest.raises(ConfigError, match="method.levels"):
        build(stream, distill_weight=0.1, levels=["features.9"])
    with pytest.raises(ConfigError, match="stream=task_free"):
        run_job("method=mmkdda", "stream=task_free", "eval.every=0")


def test_a_resumed_run_restores_the_teacher(tmp_path, monkeypatch):
    """Same accuracy matrix (asserted by `interrupt_and_resume`) and the same teacher and
    meta FLOPs as the uninterrupted run."""
    resumed, ref = interrupt_and_resume(
        tmp_path, monkeypatch, MMKDDA, ["method=mmkdda", "method.mix=mixup", "stream=online",
                                        "memory.size=50", "model.hidden=[50]", "eval.every=0"],
        stop_at=60)
    assert resumed["flops_teacher"] == ref["flops_teacher"] > 0
    assert resumed["flops_meta"] == ref["flops_meta"]
    assert resumed["acc_class_il"] == ref["acc_class_il"]


@needs_mnist
def test_it_beats_finetuning_on_online_split_mnist(run_job):
    small = ["benchmark=split_mnist", "stream=online", "benchmark.val_fraction=0.9",
             "model.hidden=[100,100]", "optimizer.lr=0.1", "eval.every=0"]
    mm, _ = run_job("method=mmkdda", "memory.size=200", *small)
    ft, _ = run_job("method=finetune", *small)
    assert ft["acc_class_il"] < 0.25  # finetuning keeps only the last task
    assert mm["acc_class_il"] > ft["acc_class_il"] + 0.4
    assert mm["flops_teacher"] > 0 and mm["flops_meta"] > 0


def test_default_levels_are_resolved_by_config():
    cfg = compose_config([f"data.root={data_root()}", "method=mmkdda", "model=convnet"])
    assert cfg.method.levels is None and list(cfg.method.scales) == [1, 2]
