"""Relational Experience Replay: look-ahead gradient, fixed phase = base method, meta FLOPs,
learned weights per task, resume."""

import functools

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.derpp import DERpp
from cl_bench.methods.er import ER
from cl_bench.methods.er_ace import ERACE
from cl_bench.methods.rer import RelationalDERpp, RelationalER, RelationalERACE
from cl_bench.models.mlp import MLP
from conftest import batch_of, interrupt_and_resume, needs_mnist, tiny_stream

PAIRS = [(ER, RelationalER, {}), (DERpp, RelationalDERpp, {"alpha": 0.3, "beta": 0.5}),
         (ERACE, RelationalERACE, {})]


def build(cls, dtype=torch.float32, **options):
    torch.manual_seed(0)
    stream = tiny_stream()
    preprocess = Preprocess((0.5,), (0.3,), "cpu")
    method = cls(model=MLP((1, 4, 4), 4, hidden=[8]).to(dtype), memory=Reservoir(size=20),
                 optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                 preprocess=lambda x, train=False: preprocess(x, train).to(dtype),
                 class_mask=stream.class_mask(), scenario="class_il",
                 counter=FlopCounter(), **options)
    return method, stream


def run_steps(method, stream, steps=6):
    """`steps` batches per task (the runner's planned steps too); the step losses."""
    losses = []
    for task in stream:
        method.begin_task(task)
        method.task_steps = steps
        for s in range(steps):
            losses.append(method.observe(batch_of(task, s))["loss"])
        method.end_task(task)
    return losses


def test_look_ahead_gradient_matches_finite_differences():
    method, stream = build(RelationalER, dtype=torch.float64)
    method.relation.double()
    run_steps(method, [stream.tasks[0]])
    method.begin_task(stream.tasks[1])
    batch = batch_of(stream.tasks[1], 0)
    state = method.meta_generator.get_state()

    def meta_loss():
        method.meta_generator.set_state(state)  # the same fresh memory batches each time
        return method.meta_objective(batch)[0]

    params = list(method.relation.parameters())
    grads = torch.autograd.grad(meta_loss(), params)
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        flat, numeric = p.data.view(-1), torch.empty_like(g).view(-1)
        for i in range(flat.numel()):
            flat[i] += eps
            up = meta_loss().item()
            flat[i] -= 2 * eps
            down = meta_loss().item()
            flat[i] += eps
            numeric[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(g.view(-1), numeric, rtol=1e-5, atol=1e-9)
    assert sum(g.abs().sum() for g in grads) > 1e-4  # the meta gradient is not trivially 0


@pytest.mark.parametrize("base, rer, options", PAIRS)
def test_fixed_phase_is_the_base_method_bit_for_bit(base, rer, options):
    """With the warm start never reached, meta steps run on task 2 (they draw from their
    own generator, step only the relation net) and the model trains exactly as the base."""
    reference, stream = build(base, **options)
    ref_losses = run_steps(reference, stream)
    method, stream = build(rer, warm_start=1.0, meta_every=2, **options)
    losses = run_steps(method, stream)
    assert method.meta_steps == 3 and method.counter.components["meta"] > 0
    assert torch.equal(torch.stack(losses), torch.stack(ref_losses))
    for p, q in zip(method.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert method.summary()["rer_w_new_per_task"] == [None, None]


def test_learned_weights_replace_the_fixed_ones_after_the_warm_start():
    reference, stream = build(ER)
    ref_losses = run_steps(reference, stream, steps=6)
    method, stream = build(RelationalER, warm_start=0.5, meta_every=2)
    losses = run_steps(method, stream, steps=6)
    assert torch.equal(torch.stack(losses[:9]), torch.stack(ref_losses[:9]))  # to step 3 of task 2
    assert not torch.equal(losses[9], ref_losses[9])
    summary = method.summary()
    w_new, w_buf = summary["rer_w_new_per_task"][1], summary["rer_w_buf_per_task"][1]
    assert summary["rer_w_new_per_task"][0] is None and 0 < w_new < 1 and 0 < w_buf < 1
    assert summary["rer_ratio_buf_new_per_task"][1] == pytest.approx(w_buf / w_new)


def test_meta_flops_hand_count_and_flop_counter_mode():
    """One meta step of RER-ER on the 16-8-4 MLP, batch 10 + 10 replayed, fresh batch 10:
    look-ahead pass 2*20*(16*8+8*4) forward, its backward (weight grads of both layers,
    input grad of the head), the relation net (3 layers 2*10*2*16, weight grads, the
    input grad of its last layer), the second-order term (the look-ahead backward again),
    and the meta pass on 10 samples with its backward."""
    method, stream = build(RelationalER)
    run_steps(method, [stream.tasks[0]], steps=3)
    method.begin_task(stream.tasks[1])
    f1 = 2 * 20 * (16 * 8 + 8 * 4)
    b1 = f1 + 2 * 20 * 8 * 4
    relation = 3 * 640 + 3 * 640 + 640
    f2 = 2 * 10 * (16 * 8 + 8 * 4)
    meta = f1 + b1 + relation + b1 + (2 * f2 + 2 * 10 * 8 * 4)
    assert meta == 33280
    before = method.counter.train_flops
    with FlopCounterMode(display=False) as mode:
        method.meta_step(batch_of(stream.tasks[1], 0))
    assert method.counter.components["meta"] == method.counter.train_flops - before == meta
    assert mode.get_total_flops() == meta  # the functional passes and double backward seen


@pytest.mark.parametrize("cls", [RelationalDERpp, RelationalERACE])
def test_meta_flops_match_flop_counter_mode(cls):
    method, stream = build(cls)
    run_steps(method, [stream.tasks[0]], steps=3)
    method.begin_task(stream.tasks[1])
    with FlopCounterMode(display=False) as mode:
        method.meta_step(batch_of(stream.tasks[1], 0))
    assert method.counter.components["meta"] == mode.get_total_flops() > 0


@needs_mnist
def test_seq_mnist_run_logs_meta_flops_and_weights_per_task(run_job):
    """50 steps a task: 10 meta steps on each of tasks 2-5, each 15,408,480 FLOPs on the
    784-100-100-10 MLP (look-ahead on 20 samples 3,576,000 + backward 4,016,000, relation
    net 4,480, second order 4,016,000, meta pass on 10 samples 3,796,000)."""
    summary, run_dir = run_job("experiment=seq_mnist_rer_er", "budget.epochs=null",
                               "budget.iters=50", "eval.every=0", "memory.size=200")
    assert summary["rer_meta_steps"] == 40
    assert summary["flops_meta"] == 40 * 15_408_480
    assert summary["flops_meta"] < summary["train_flops"]
    w_new, w_buf = summary["rer_w_new_per_task"], summary["rer_w_buf_per_task"]
    assert w_new[0] is None and w_buf[0] is None and len(w_new) == 5
    assert all(0 < w < 1 for w in w_new[1:] + w_buf[1:])
    assert summary["rer_ratio_buf_new_per_task"][1:] == pytest.approx(
        [b / n for b, n in zip(w_buf[1:], w_new[1:], strict=True)])
    train = pd.read_csv(run_dir / "train.csv")
    learned = train[train.rer_w_new.notna()]  # rows every 10 steps; from step 26 of a task
    assert learned.step.tolist() == [s + 50 * t for t in range(4) for s in (80, 90, 100)]
    steps = pd.Series([5, 10, 10] * 4, index=learned.index)  # learned steps in each window
    per_task = (learned.rer_w_new * steps).groupby(learned.train_task).sum() / 25
    assert per_task.tolist() == pytest.approx(w_new[1:], rel=1e-5)


def test_resume_keeps_the_relation_net(tmp_path, monkeypatch):
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, RelationalER,
        ["method=rer_er", "memory.size=50", "budget.epochs=1", "eval.every=0"], stop_at=100)
    assert summary["resumed_after_task"] >= 2  # relation net trained on tasks 2, 3
    for key in ("rer_meta_steps", "rer_w_new_per_task", "rer_w_buf_per_task", "flops_meta"):
        assert summary[key] == ref[key]


@pytest.mark.parametrize("key, value", [("meta_every", 0), ("warm_start", 1.5),
                                        ("meta_lr", 0.0), ("hidden", 0)])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"method.{key}"):
        build(RelationalER, **{key: value})


def test_constant_weights_ablation_runs_no_meta_step():
    method, stream = build(RelationalER, warm_start=0.5, constant_weights=[0.25, 0.75])
    losses = run_steps(method, stream)
    reference, stream = build(RelationalER, warm_start=1.0)
    assert torch.equal(torch.stack(losses[:9]), torch.stack(run_steps(reference, stream)[:9]))
    summary = method.summary()
    assert summary["rer_meta_steps"] == 0 and "meta" not in method.counter.components
    assert summary["rer_w_new_per_task"] == [None, 0.25]
    assert summary["rer_ratio_buf_new_per_task"] == [None, 3.0]
    with pytest.raises(ValueError, match="method.constant_weights needs 3 weights"):
        build(RelationalDERpp, constant_weights=[1.0, 0.5])
