"""Parameter isolation by pruning and attention (PackNet, HAT, CP&S, NISPA): old tasks'
logits bitwise unchanged with task ids, capacity numbers, HAT's annealing and gradient
compensation, CP&S task selection, NISPA's frozen stable units, resume."""

import functools
import math

import pytest
import torch

from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.base import NoMemory
from cl_bench.methods.cps import CPS, relief_keep
from cl_bench.methods.hat import HAT, anneal_s, compensation
from cl_bench.methods.nispa import NISPA, stable_fraction, top_units
from cl_bench.methods.packnet import PackNet
from cl_bench.models.masked import pack_bits, unpack_bits
from cl_bench.models.mlp import MLP
from conftest import compose_config, data_root, interrupt_and_resume, needs_mnist, tiny_stream


def build(cls, hidden=(8, 5), lr=0.1, **options):
    torch.manual_seed(0)
    stream = tiny_stream()
    method = cls(model=MLP((1, 4, 4), 4, hidden=list(hidden)), memory=NoMemory(),
                 optimizer=functools.partial(torch.optim.SGD, lr=lr),
                 preprocess=Preprocess((0.5,), (0.3,), "cpu"), class_mask=stream.class_mask(),
                 scenario="task_il", **options)
    return method, stream


def batch(task, s):
    idx = torch.arange(s * 10, s * 10 + 10) % len(task.train_y)
    return Batch(task.train_x[idx], task.train_y[idx], torch.full((10,), task.id))


def run_task(method, task, steps):
    method.begin_task(task)
    method.train_data(task)
    method.task_steps = steps
    for s in range(steps):
        method.observe(batch(task, s))
    method.end_task(task)


# -- bitwise: old tasks' logits after later tasks -----------------------------------------
def mnist_parts(tmp_path, method, *overrides):
    from cl_bench.experiment import build_parts

    torch.manual_seed(0)
    cfg = compose_config([f"data.root={data_root()}", f"method={method}", "scenario=task_il",
                          "benchmark=split_mnist", "model.hidden=[64,64]", *overrides])
    return build_parts(cfg, tmp_path)


def train_mnist_task(method, task, steps=40, size=64):
    method.begin_task(task)
    data = method.train_data(task)
    method.task_steps = steps
    gen = torch.Generator().manual_seed(task.id)
    for _ in range(steps):
        method.observe(data[torch.randint(len(data), (size,), generator=gen)])
    method.end_task(task)


@needs_mnist
@pytest.mark.parametrize("name", ["packnet", "hat", "cps", "nispa"])
def test_old_task_logits_are_bitwise_unchanged_with_task_ids(tmp_path, name):
    parts = mnist_parts(tmp_path, name)
    method, tasks = parts.method, [t.to(parts.device) for t in parts.stream.tasks]
    x = method.preprocess(tasks[0].test_x[:500])
    ids = torch.zeros(len(x), dtype=torch.long)
    own = method.class_mask[0]

    def logits():
        method.model.eval()
        out = method.predict(x, ids)[:, own].clone()
        method.model.train()
        return out

    train_mnist_task(method, tasks[0])
    before = logits()
    weights = [p.detach().clone() for p in method.model.parameters()]
    assert (before.argmax(1) == tasks[0].test_y[:500]).float().mean() > 0.9
    for task in tasks[1:3]:
        train_mnist_task(method, task)
    assert torch.equal(logits(), before)
    changed = [not torch.equal(w, p) for w, p in zip(weights, method.model.parameters(),
                                                     strict=True)]
    assert any(changed[:-2])  # the later tasks did train shared layers


def test_hat_soft_gates_forget_a_little_where_hard_gates_do_not():
    """The negative control of the bitwise property: with sigmoid(smax e) gates (the
    paper's test) a unit whose gate is neither 0 nor 1 is partly open to later tasks."""
    method, stream = build(HAT, hidden=(16,), hard=False, smax=4.0, c=0.0)
    x = method.preprocess(stream.tasks[0].test_x)
    run_task(method, stream.tasks[0], 6)
    before = method.predict(x, torch.zeros(len(x), dtype=torch.long))[:, :2].clone()
    run_task(method, stream.tasks[1], 6)
    after = method.predict(x, torch.zeros(len(x), dtype=torch.long))[:, :2]
    assert not torch.equal(after, before)


# -- capacity -----------------------------------------------------------------------------
def test_packnet_capacity_is_the_hand_computed_fraction_of_weights():
    # maskable weights: 16x8 + 8x5 = 168; prune 0.5 of the free weights per layer
    method, stream = build(PackNet, prune=0.5, retrain=0.5)
    run_task(method, stream.tasks[0], 4)
    first = {n: layer.weight.detach().clone() for n, layer in method.layers.items()}
    for n in method.layers:  # what task 0 released was zeroed
        assert (first[n][method.owner[n] == 0] == 0).all()
    run_task(method, stream.tasks[1], 4)
    s = method.summary()
    # task 0 owns 64 + 20, task 1 half of the rest: 32 + 10; owner ids of 2 bits a weight
    assert s["capacity_per_task"] == [84 / 168, 42 / 168]
    assert s["capacity_used"] == pytest.approx(126 / 168)
    assert s["mask_bytes"] == math.ceil(168 * 2 / 8)
    for n, layer in method.layers.items():
        own0 = method.owner[n] == 1
        assert torch.equal(layer.weight[own0], first[n][own0])  # read-only for task 1
        assert (layer.weight[method.owner[n] == 0] == 0).all()


def test_hat_capacity_counts_units_whose_hard_gate_is_on():
    method, stream = build(HAT, hidden=(8, 5))
    run_task(method, stream.tasks[0], 6)
    run_task(method, stream.tasks[1], 6)
    on0 = [e[0] > 0 for e in method.emb]
    on1 = [e[1] > 0 for e in method.emb]
    new1 = sum(int((b & ~a).sum()) for a, b in zip(on0, on1, strict=True))
    s = method.summary()
    assert s["capacity_per_task"] == [sum(int(a.sum()) for a in on0) / 13, new1 / 13]
    assert s["mask_bytes"] == 2 * 2  # 13 units a task, one bit each
    assert torch.equal(method.A[0], (on0[0] | on1[0]).float())


def test_hat_trains_on_when_earlier_tasks_took_every_unit():
    """The regulariser's denominator (units still free) is 0 then: the term is 0, not NaN
    (a narrow net on split CIFAR-100 ran out of units at task 9 and diverged)."""
    method, stream = build(HAT, hidden=(8, 5))
    run_task(method, stream.tasks[0], 3)
    for a in method.A:
        a.fill_(1.0)
    method.begin_task(stream.tasks[1])
    method.train_data(stream.tasks[1])
    method.task_steps = 3
    out = method.observe(batch(stream.tasks[1], 0))
    assert torch.isfinite(out["loss"]) and out["terms"]["reg"] == 0


# -- HAT: annealing, compensation, gradient masks -----------------------------------------
def test_hat_annealing_and_compensation_match_the_paper_formulas():
    assert anneal_s(0, 5, 400.0) == 1 / 400
    assert anneal_s(4, 5, 400.0) == 400.0
    assert anneal_s(2, 5, 400.0) == pytest.approx(1 / 400 + (400 - 1 / 400) / 2)
    e = torch.tensor([0.5, -1.0, 3.0])
    want = [400 / 2 * (math.cosh(2 * v) + 1) / (math.cosh(v) + 1) for v in (0.5, -1.0)]
    want.append(400 / 2 * (math.cosh(5.0) + 1) / (math.cosh(3.0) + 1))  # s e clamped at 5
    got = compensation(e, 2.0, 400.0, thres_cosh=5.0)
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_hat_steps_anneal_s_per_epoch_and_compensate_the_embedding_gradient():
    method, stream = build(HAT, lr=0.0)  # lr 0: the gradients stay to be read
    task = stream.tasks[0]
    method.begin_task(task)
    method.train_data(task)  # 60 samples, batches of 10: 6 batches an epoch
    method.task_steps = 8
    seen = []
    for s in range(8):
        method.observe(batch(task, s))
        seen.append(method.s)
    assert seen == [anneal_s(b, 6, 400.0) for b in (0, 1, 2, 3, 4, 5, 0, 1)]
    compensated = [e.grad[0].clone() for e in method.emb]
    method.step = 7  # the last step again, by hand: raw gradient times the formula
    for e in method.emb:
        e.grad = None
    terms = method.loss(batch(task, 7))
    sum(terms.values()).backward()
    for e, got in zip(method.emb, compensated, strict=True):
        factor = compensation(e[0].detach(), method.s, 400.0, 50.0)
        assert torch.allclose(got, e.grad[0] * factor, rtol=1e-5, atol=1e-12)


def test_hat_masks_the_weight_gradients_of_units_earlier_tasks_use():
    method, stream = build(HAT, hidden=(8, 5), lr=0.0)
    run_task(method, stream.tasks[0], 6)
    A0, A1 = method.A
    task = stream.tasks[1]
    method.begin_task(task)
    method.train_data(task)
    method.task_steps = 1
    method.observe(batch(task, 0))
    w0, w1 = (layer.weight.grad for layer in method.layers.values())
    assert (w0[A0 > 0] == 0).all() and (method.layers["features.1"].bias.grad[A0 > 0] == 0).all()
    both = (A1[:, None] > 0) & (A0[None, :] > 0)
    assert (w1[both] == 0).all()
    assert (w1[~both] != 0).any()


# -- CP&S ---------------------------------------------------------------------------------
def test_relief_keeps_the_fewest_connections_carrying_alpha_of_the_importance():
    w = torch.tensor([[4.0, -3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    x = torch.tensor([1.0, 1.0, 1.0, 2.0])  # importances row 0: 4 3 2 2 (sum 11)
    keep = relief_keep(w, x, torch.ones_like(w, dtype=torch.bool), alpha=0.6)
    # row 0: 4 + 3 = 7 >= 6.6 -> two kept; row 1 (1 1 1 2, sum 5): 2 + 1 = 3 >= 3 -> two
    assert keep[0].tolist() == [True, True, False, False]
    assert keep[1].sum() == 2 and keep[1, 3]


@pytest.mark.parametrize("select, want", [("max_output", [0, 1, 0]), ("entropy", [1, 1, 0])])
def test_cps_selects_the_most_confident_subnetwork_per_sample(select, want):
    method, _ = build(CPS, select=select)
    method.task = 1
    method.masks = [{}, {}]
    # sample 0: subnetwork 0 is larger (3 vs 2) but flat, subnetwork 1 peaked;
    # sample 1: subnetwork 1 wins both ways; sample 2: subnetwork 0 wins both ways.
    # Other tasks' columns (9s) must not count.
    table = {0: torch.tensor([[3.0, 3.0, 9, 9], [0.0, 1.0, 9, 9], [5.0, 0.0, 9, 9]]),
             1: torch.tensor([[9, 9, 2.0, -2.0], [9, 9, 4.0, 0.0], [9, 9, 0.1, 0.0]])}
    method.forward_task = lambda x, t: table[t][x[:, 0].long()]  # row = the sample's number
    x = torch.zeros(3, 16)
    x[:, 0] = torch.arange(3)
    out = method.predict(x)
    assert method._selected[1].tolist() == want
    for i, t in enumerate(want):
        assert torch.isinf(out[i, [c for c in range(4) if c // 2 != t]]).all()
    method.predict(x, torch.tensor([1, 1, 0]))
    assert method.summary()["task_infer_acc"] == pytest.approx(
        sum(a == b for a, b in zip(want, [1, 1, 0], strict=True)) / 3)


def test_cps_masks_are_bit_packed_and_shared_weights_stay_read_only():
    method, stream = build(CPS, alpha=0.7)
    run_task(method, stream.tasks[0], 6)
    w0 = {n: layer.weight.detach().clone() for n, layer in method.layers.items()}
    owned0 = {n: o.clone() for n, o in method.owned.items()}
    run_task(method, stream.tasks[1], 6)
    s = method.summary()
    assert s["mask_bytes"] == 2 * (math.ceil(128 / 8) + math.ceil(40 / 8))
    for n, layer in method.layers.items():
        assert torch.equal(layer.weight[owned0[n]], w0[n][owned0[n]])
    assert s["capacity_used"] == pytest.approx(
        sum(int(o.sum()) for o in method.owned.values()) / 168)


def test_pack_roundtrip():
    m = torch.rand(3, 7, 5) > 0.5
    assert pack_bits(m).numel() == math.ceil(105 / 8)
    assert torch.equal(unpack_bits(pack_bits(m), m.shape), m)


# -- NISPA --------------------------------------------------------------------------------
def test_nispa_schedule_and_unit_selection_match_hand_computed_values():
    assert stable_fraction(1, 30) == pytest.approx(0.5 * (1 + math.cos(math.pi / 30)))
    assert stable_fraction(5, 10) == pytest.approx(0.5)
    act = torch.tensor([1.0, 5.0, 0.0, 3.0, 1.0])  # total 10: 5 + 3 = 8 >= 7.5
    assert top_units(act, 0.75).tolist() == [False, True, False, True, False]
    assert top_units(act, 0.81).tolist() == [True, True, False, True, False]  # ties: first


def test_nispa_stable_units_are_frozen_and_read_only_stable_units_across_phases():
    method, stream = build(NISPA, hidden=(16, 12), density=0.5, phases=3, k=3.0)
    run_task(method, stream.tasks[0], 9)
    stable = [s.clone() for s in method.stable]
    assert stable[-1].tolist() == [True, True, False, False]  # task 0's classes
    assert all(s.any() and not s.all() for s in stable[:-1])
    frozen = {n: f.clone() for n, f in method.frozen.items()}
    w0 = {n: layer.weight.detach().clone() for n, layer in method.layers.items()}
    b0 = [layer.bias.detach().clone() for layer in method.layers.values()]
    task = stream.tasks[1]
    method.begin_task(task)
    method.train_data(task)
    method.task_steps = 9
    for s in range(9):  # three phases, two selections and rewirings
        method.observe(batch(task, s))
        for i, (n, layer) in enumerate(method.layers.items()):
            assert torch.equal(layer.weight[frozen[n]], w0[n][frozen[n]])
            assert torch.equal(layer.bias[stable[i]], b0[i][stable[i]])
            # nothing plastic feeds a stable unit of an earlier task
            src = method._src(i, stable)
            assert not (method.conn[n] & method._pair(i, stable[i], ~src)).any()
    method.end_task(task)
    assert all((new | old).equal(new) for new, old in zip(method.stable, stable, strict=True))
    assert sum(int(f.sum()) for f in method.frozen.values()) > \
        sum(int(f.sum()) for f in frozen.values())
    s = method.summary()
    assert len(s["capacity_per_task"]) == 2
    hidden = sum(len(u) for u in method.stable[:-1])
    assert s["capacity_used"] == sum(int(u.sum()) for u in method.stable[:-1]) / hidden


# -- resume -------------------------------------------------------------------------------
@needs_mnist
@pytest.mark.parametrize("name, cls", [("packnet", PackNet), ("hat", HAT), ("cps", CPS),
                                       ("nispa", NISPA)])
def test_resume_keeps_masks_and_ownership(tmp_path, monkeypatch, name, cls):
    overrides = [f"method={name}", "benchmark=split_mnist", "scenario=task_il",
                 "model.hidden=[32,32]", "budget.iters=15", "budget.batch_size=32",
                 "eval.every=0"]
    summary, ref = interrupt_and_resume(tmp_path, monkeypatch, cls, overrides, stop_at=40)
    assert summary["capacity_per_task"] == ref["capacity_per_task"]
    assert summary["mask_bytes"] == ref["mask_bytes"]


@pytest.mark.parametrize("cls, options, key", [
    (PackNet, {"prune": 1.0}, "method.prune"), (HAT, {"anneal": "batch"}, "method.anneal"),
    (CPS, {"select": "vote"}, "method.select"), (NISPA, {"phases": 1}, "method.phases")])
def test_bad_values_name_their_key(cls, options, key):
    with pytest.raises(ValueError, match=key):
        build(cls, **options)


def test_task_il_methods_refuse_class_il_and_weight_decay():
    stream = tiny_stream()
    with pytest.raises(ValueError, match="supports \\['task_il'\\]"):
        PackNet(model=MLP((1, 4, 4), 4, hidden=[8]), memory=NoMemory(),
                optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                preprocess=Preprocess((0.5,), (0.3,), "cpu"), class_mask=stream.class_mask(),
                scenario="class_il")
    method, stream = build(HAT)
    method.make_optimizer = functools.partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4)
    with pytest.raises(ValueError, match="optimizer.weight_decay=0"):
        method.begin_task(stream.tasks[0])
