"""Projection and low-rank plugins: OWM / EOWM projectors and incremental rank updates."""

import functools

import pandas as pd
import pytest
import torch
from torch import nn

from cl_bench.budget.flops import FlopCounter, measure_flops
from cl_bench.data.batch import Batch
from cl_bench.data.benchmarks import split_stream
from cl_bench.data.stream import Task, TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.finetune import Finetune
from cl_bench.models.mlp import MLP
from cl_bench.plugins.owm import EOWM, OWM, rls_update
from cl_bench.plugins.rank_update import RankUpdate, RankUpdateLinear, TaskHead
from conftest import compose_config, data_root, interrupt_and_resume, needs_mnist


def stream_of(n_tasks: int) -> TaskStream:
    """`n_tasks` tasks of two classes, 40 random 4x4 images each, a class-dependent pixel."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(n_tasks):
        y = torch.arange(2 * t, 2 * t + 2).repeat(20)
        x = torch.randint(0, 256, (40, 1, 4, 4), generator=gen, dtype=torch.uint8)
        x[:, 0, 0, 0] = ((y - 2 * t) * 200).to(torch.uint8)
        tasks.append(Task(t, [2 * t, 2 * t + 1], x, y, x, y))
    return TaskStream("tiny", tasks, 2 * n_tasks, (1, 4, 4), ("class_il", "task_il"),
                      (0.5,), (0.3,))


def make(stream, plugins, scenario="class_il", hidden=(8,), optimizer=None):
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.n_classes, hidden=list(hidden))
    optimizer = optimizer or functools.partial(torch.optim.SGD, lr=0.1)
    return Finetune(model=model, optimizer=optimizer, memory=Reservoir(0),
                    preprocess=Preprocess(stream.mean, stream.std, "cpu"),
                    class_mask=stream.class_mask(), scenario=scenario, plugins=plugins)


def train(method, task, steps, batch_size=10, gen=None):
    gen = gen or torch.Generator().manual_seed(task.id)
    method.begin_task(task)
    for _ in range(steps):
        idx = torch.randint(0, len(task.train_y), (batch_size,), generator=gen)
        method.observe(Batch(task.train_x[idx], task.train_y[idx],
                             torch.full((batch_size,), task.id)))
    method.end_task(task)


# -- OWM ---------------------------------------------------------------------------------
def test_rls_update_matches_hand_computed_projector():
    P = torch.eye(2)
    rls_update(P, torch.tensor([1.0, 1.0]), alpha=1.0)
    # P - P x x^T P / (alpha + x^T P x) = I - [[1, 1], [1, 1]] / 3
    assert torch.allclose(P, torch.tensor([[2.0, -1.0], [-1.0, 2.0]]) / 3)
    # several inputs: P = (I + X X^T / alpha)^-1 (Sherman-Morrison from P_0 = I), exactly
    # symmetric, and a seen input is (almost) annihilated
    gen = torch.Generator().manual_seed(0)
    xs, alpha = torch.randn(3, 6, generator=gen), 1e-3
    P = torch.eye(6)
    for x in xs:
        rls_update(P, x, alpha)
    X = xs.T.double()
    assert torch.allclose(P.double(), torch.linalg.inv(torch.eye(6, dtype=torch.double)
                                                       + X @ X.T / alpha), atol=1e-4)
    assert torch.equal(P, P.T)
    for x in xs:
        assert (P @ x).norm() < 1e-3 * x.norm()
    unseen = torch.linalg.svd(X.float().T).Vh[-1]  # orthogonal to every seen input
    assert torch.allclose(P @ unseen, unseen, atol=1e-4)


def test_projector_flops_equal_hand_count():
    stream = stream_of(2)
    # layer 16->8 (d = 17, m = 8) and head 8->4 (d = 9, m = 4): RLS 4 d^2 + 2 d, each
    # projection (of the gradient, of the step) 2 m d^2
    gradient = (4 * 289 + 34 + 2 * 8 * 289) + (4 * 81 + 18 + 2 * 4 * 81)
    both = gradient + 2 * 8 * 289 + 2 * 4 * 81
    # EOWM adds the mean output 2 m d, its RLS 4 m^2 + 2 m and per projection 2 m^2 d
    eowm = both + (2 * 8 * 17 + 4 * 64 + 16 + 2 * 2 * 64 * 17) \
        + (2 * 4 * 9 + 4 * 16 + 8 + 2 * 2 * 16 * 9)
    for plugin, per_step in ((OWM(alpha=0.1, project="gradient"), gradient),
                             (OWM(alpha=0.1), both),
                             (EOWM(alpha=0.1, alpha_out=0.1), eowm)):
        method = make(stream, [plugin])
        before = method.counter.train_flops
        train(method, stream.tasks[0], steps=5)
        assert method.counter.components["projector"] == 5 * per_step
        model_flops = method.counter.train_flops - before - 5 * per_step
        # the MLP itself: forward + weight grads, + input grad of the head, per sample
        assert model_flops == 5 * 10 * (3 * 2 * 16 * 8 + 3 * 2 * 8 * 4 - 2 * 16 * 8)


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
@needs_mnist
def test_owm_keeps_task1_outputs_where_finetuning_moves_them():
    """Class-IL split MNIST, tasks 1 and 2, MLP 784-100-100-10, plain SGD (lr 0.1), 150
    steps of 64 per task. Tolerance: OWM's logits on task 1's test images move by < 5 %
    (relative Frobenius norm; measured 2.8 %) where finetuning's move by > 50 % (129 %).
    Why it holds: with alpha = 1e-3, P_l x ~ alpha / (alpha + |x|^2 n) x for inputs x in
    the span of the absorbed batch means, and a task's digits lie close to that span, so
    each layer's output on them barely changes (the head's too, new classes included)."""
    stream = split_stream(name="split_mnist", dataset="mnist", n_tasks=5, root=data_root())
    changes, accs = {}, {}
    for name, plugins in (("finetune", []), ("owm", [OWM(alpha=1e-3)])):
        method = make(stream, plugins, hidden=(100, 100))
        gen = torch.Generator().manual_seed(0)
        task1 = stream.tasks[0]
        x = method.preprocess(task1.test_x)
        outs = []
        for task in stream.tasks[:2]:
            train(method, task, steps=150, batch_size=64, gen=gen)
            with torch.no_grad():
                outs.append(method.predict(x.clone()))
        changes[name] = ((outs[1] - outs[0]).norm() / outs[0].norm()).item()
        accs[name] = (outs[1].argmax(1) == task1.test_y).float().mean().item()
    assert changes["owm"] < 0.05 < 0.5 < changes["finetune"]
    assert accs["owm"] > 0.95 and accs["finetune"] < 0.1  # class-IL accuracy on task 1


def test_owm_state_round_trips_and_config_errors_name_the_key():
    stream = stream_of(2)
    method = make(stream, [OWM(alpha=0.5)])
    train(method, stream.tasks[0], steps=3)
    state = method.plugins[0].state_dict()
    other = make(stream, [OWM(alpha=0.5)])
    other.plugins[0].load_state_dict(state)
    for a, b in zip(method.plugins[0].layers, other.plugins[0].layers, strict=True):
        assert torch.equal(a.P, b.P) and not torch.equal(a.P, torch.eye(a.d))
    with pytest.raises(ValueError, match=r"plugins.owm.alpha has 3 values"):
        make(stream, [OWM(alpha=[1.0, 1.0, 1.0])])
    with pytest.raises(ValueError, match=r"plugins.owm.project"):
        OWM(project="weights")
    with pytest.raises(ValueError, match=r"plugins.owm.decay_steps"):
        make(stream, [OWM(alpha_decay=0.01)])
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="nn.Linear layers only"):
        OWM().wrap_model(conv)


def test_owm_run_resumes_exactly(tmp_path, monkeypatch):
    interrupt_and_resume(tmp_path, monkeypatch, Finetune,
                         ["method=owm", "budget.epochs=null", "budget.iters=20",
                          "eval.every=0", "plugins.owm.alpha_decay=0.01"], stop_at=45)
    # owm.csv: trace(P_l) after every task (5 tasks x 3 linear layers), shrinking
    free = pd.read_csv(tmp_path / "run" / "owm.csv")
    assert list(free.task) == [t for t in range(5) for _ in range(3)]
    for _, layer in free.groupby("layer"):
        assert (layer.trace_P.diff().dropna() < 0).all() and (layer.trace_P < layer.dim).all()


# -- incremental rank updates ------------------------------------------------------------
def make_rank(stream, rank=2, first_rank=3, warm_start=False):
    adam = functools.partial(torch.optim.Adam, lr=0.05)
    return make(stream, [RankUpdate(rank=rank, first_rank=first_rank, warm_start=warm_start)],
                scenario="task_il", hidden=(8, 8), optimizer=adam)


@pytest.mark.parametrize("warm_start", [False, True])
def test_rank_update_preserves_old_predictions_exactly(warm_start):
    stream = stream_of(3)
    method = make_rank(stream, warm_start=warm_start)
    assert method.predict_needs_task_ids
    x = method.preprocess(torch.cat([t.test_x for t in stream.tasks]))
    ids = torch.cat([torch.full_like(t.test_y, t.id) for t in stream.tasks])
    old = []
    for task in stream.tasks:
        train(method, task, steps=15)
        with torch.no_grad():
            now = method.predict(x, ids)
        for j, before in enumerate(old):  # every earlier task: bit-identical logits
            assert torch.equal(now[ids == j], before[ids == j])
        old.append(now)
        # and the current task's network has learned its task
        own = now[ids == task.id][:, stream.class_mask()[task.id]].argmax(1)
        assert (own == stream.tasks[task.id].test_y - 2 * task.id).float().mean() > 0.9
    # the same steps without the plugin move task 1's outputs
    plain = make(stream, [], scenario="task_il", hidden=(8, 8),
                 optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    train(plain, stream.tasks[0], steps=15)
    with torch.no_grad():
        first = plain.predict(x)
    train(plain, stream.tasks[1], steps=15)
    with torch.no_grad():
        assert not torch.equal(plain.predict(x)[ids == 0], first[ids == 0])


def test_rank_update_parameters_grow_by_the_exact_formula():
    stream = stream_of(4)
    r1, r = 3, 2
    method = make_rank(stream, rank=r, first_rank=r1)
    plugin = method.plugins[0]
    total = 0
    for t, task in enumerate(stream.tasks):
        train(method, task, steps=2)
        k = r1 + r * t  # factors task t's selector weighs
        rt = r1 if t == 0 else r
        # per hidden layer r_t (n + m) + K_t + m (bias); layers 16->8, 8->8; head 2 x (8 + 1)
        expected = (rt * (16 + 8) + k + 8) + (rt * (8 + 8) + k + 8) + 2 * 9
        assert plugin.task_parameter_count(t) == expected
        # what task t trains is exactly what it adds
        assert sum(p.numel() for p in method.trainable_parameters()) == expected
        total += expected
    # after T tasks: T head/bias parts + r per task's factors, linear in T, plus the
    # selectors' sum_t K_t
    T = len(stream.tasks)
    assert total == (T * (8 + 8 + 18) + (r1 + (T - 1) * r) * (24 + 16)
                     + 2 * sum(r1 + r * t for t in range(T)))


def test_rank_update_flops_rules_match_flop_counter_mode():
    active = type("A", (), {"task": 1})()
    layer = RankUpdateLinear(nn.Linear(6, 5), [3, 2], active)
    for p in layer.task_parameters(0):
        p.requires_grad_(False)
    counter = FlopCounter().attach(layer)
    for x_grad in (False, True):
        x = torch.randn(4, 6, requires_grad=x_grad)
        before = counter.train_flops
        layer(x).sum().backward()
        assert counter.train_flops - before == measure_flops(layer, (x,), {}, backward=True)
    head = TaskHead(nn.Linear(5, 4), torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]]).bool(), active)
    counter.attach(head)
    before = counter.train_flops
    head(torch.randn(4, 5, requires_grad=True)).sum().backward()
    assert counter.train_flops - before == 2 * 4 * 5 * 2 * 3  # forward, weight and input grads


def test_rank_update_is_task_il_only_and_resumes_exactly(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="cannot take plugin rank_update in scenario=class_il"):
        make(stream_of(2), [RankUpdate()], scenario="class_il")
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, Finetune,
        ["method=rank_update", "scenario=task_il", "budget.epochs=null", "budget.iters=20",
         "eval.every=0"], stop_at=45)
    assert summary["acc_task_il"] == ref["acc_task_il"]
    cfg = compose_config(["method=rank_update", "scenario=task_il"])
    assert cfg.plugins.rank_update.first_rank == 10
