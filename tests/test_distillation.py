"""LwF and PLwF: the distillation loss and the credit-assignment projection against hand
computations, frozen teachers, state round trips, and LwF beating finetuning on split MNIST."""

import functools
import math

import pytest
import torch

from cl_bench.data.stream import Task, TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.base import NoMemory
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.er import ER
from cl_bench.methods.finetune import Finetune
from cl_bench.models.mlp import MLP
from cl_bench.plugins.lwf import LwF, kd_loss
from cl_bench.plugins.plwf import PLwF, project_conflict
from conftest import batch_of, compose_config, interrupt_and_resume, needs_mnist, train_task


def three_tasks() -> TaskStream:
    """Three tasks of two classes, 60 random 4x4 images each, with a class-dependent pixel."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(3):
        y = torch.arange(2 * t, 2 * t + 2).repeat(30)
        x = torch.randint(0, 256, (60, 1, 4, 4), generator=gen, dtype=torch.uint8)
        x[:, 0, 0, 0] = (y * 40).to(torch.uint8)
        tasks.append(Task(t, [2 * t, 2 * t + 1], x, y, x, y))
    return TaskStream("tiny3", tasks, 6, (1, 4, 4), ("class_il", "task_il"), (0.5,), (0.3,))


def make(plugin, scenario="task_il", method_cls=Finetune, stream=None, **kw):
    torch.manual_seed(0)
    stream = stream or three_tasks()
    memory = Reservoir(30) if method_cls is ER else NoMemory()
    method = method_cls(model=MLP((1, 4, 4), stream.n_classes, hidden=[8, 8]),
                        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                        memory=memory, preprocess=Preprocess((0.5,), (0.3,), "cpu"),
                        class_mask=stream.class_mask(), scenario=scenario, plugins=[plugin], **kw)
    return method, stream


def test_kd_loss_matches_a_hand_computation_at_temperature_2():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [4.0, 0.0]])  # two columns: the third is zero-padded
    # row 1: p = softmax([0, 1]), log q = log_softmax([0.5, 1, 0])
    z1 = math.exp(0.5) + math.exp(1.0) + 1.0
    p1 = [1 / (1 + math.e), math.e / (1 + math.e)]
    row1 = -(p1[0] * (0.5 - math.log(z1)) + p1[1] * (1.0 - math.log(z1)))
    # row 2: p = softmax([2, 0]), log q = log(1/3) for every class
    p2 = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    row2 = -(p2[0] + p2[1]) * math.log(1 / 3)
    expected = 4 * (row1 + row2) / 2  # T^2 x the batch mean
    scaled = kd_loss(student, teacher, 2.0, t2_scaling=True)
    assert scaled.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(3.82671, abs=1e-5)  # the numbers above, written out
    # van de Ven's current code (and our default) leaves out the T^2
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected / 4, rel=1e-6)


def domain_tasks() -> TaskStream:
    """Three tasks sharing the same four classes (domain-IL)."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(3):
        y = torch.arange(4).repeat(15)
        x = torch.randint(0, 256, (60, 1, 4, 4), generator=gen, dtype=torch.uint8)
        tasks.append(Task(t, [0, 1, 2, 3], x, y, x, y))
    return TaskStream("tinydomain", tasks, 4, (1, 4, 4), ("domain_il",), (0.5,), (0.3,))


@pytest.mark.parametrize("scenario", ["task_il", "class_il", "domain_il"])
def test_lwf_distils_the_classes_active_before_with_van_de_vens_weight(scenario):
    method, stream = make(LwF(), scenario,
                          stream=domain_tasks() if scenario == "domain_il" else None)
    lwf = method.plugins[0]
    train_task(method, stream.tasks[0])
    train_task(method, stream.tasks[1])
    method.begin_task(stream.tasks[2])
    batch = batch_of(stream.tasks[2])
    x = method.preprocess(batch.x)
    logits, target = method.model(x), lwf.teacher(x)
    if scenario == "task_il":  # each previous task's own softmax, averaged over the tasks
        kd = (kd_loss(logits[:, :2], target[:, :2], 2)
              + kd_loss(logits[:, 2:4], target[:, 2:4], 2)) / 2
    elif scenario == "class_il":  # the model over the 6 classes seen, the teacher over the 4 old
        kd = kd_loss(logits, target[:, :4], 2)
    else:  # all outputs
        kd = kd_loss(logits, target, 2)
    # task 3: van de Ven's current + 2 x distillation (task- and domain-IL), + 1 x (class-IL)
    weight = 1 if scenario == "class_il" else 2
    assert lwf.loss(batch)["lwf"].item() == pytest.approx(weight * kd.item(), rel=1e-6)
    lwf.weighting = "tasks"  # the 2019 code: 1/t current + (1 - 1/t) replay = 2 x in every scenario
    assert lwf.loss(batch)["lwf"].item() == pytest.approx(2 * kd.item(), rel=1e-6)
    lwf.alpha = 0.5
    assert lwf.loss(batch)["lwf"].item() == pytest.approx(0.5 * kd.item(), rel=1e-6)
    lwf.t2_scaling = True
    assert lwf.loss(batch)["lwf"].item() == pytest.approx(0.5 * 4 * kd.item(), rel=1e-6)


@pytest.mark.parametrize("plugin", [LwF, PLwF])
def test_teachers_are_frozen_unchanged_by_training_and_their_flops_are_tagged(plugin):
    method, stream = make(plugin())
    train_task(method, stream.tasks[0])
    end_of_task0 = {k: v.clone() for k, v in method.model.state_dict().items()}
    train_task(method, stream.tasks[1])
    teachers = ([method.plugins[0].teacher] if plugin is LwF
                else [s for _, s in method.plugins[0].snapshots])
    for teacher in teachers:
        assert not any(p.requires_grad for p in teacher.parameters())
        assert not teacher.training
    if plugin is PLwF:  # its first snapshot is the model at the end of task 0
        for k, v in teachers[0].state_dict().items():
            assert torch.equal(v, end_of_task0[k])
    frozen = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    before = dict(method.counter.components)
    train_task(method, stream.tasks[2])
    for teacher, weights in zip(teachers, frozen, strict=True):
        for k, v in teacher.state_dict().items():
            assert torch.equal(v, weights[k])
    assert not torch.equal(method.model.state_dict()["head.weight"], frozen[-1]["head.weight"])
    # 5 steps x 10 samples x (16*8 + 8*8 + 8*6) MACs x 2 per teacher forward
    n_teachers = 1 if plugin is LwF else 2
    assert method.counter.components["teacher"] - before["teacher"] == (
        n_teachers * 5 * 10 * 2 * (16 * 8 + 8 * 8 + 8 * 6))


def test_projection_of_hand_made_gradients():
    # conflicting: g_new = (1, 1 | 0), g_old = (-1, 0 | 1): dot -1, |g_old|^2 2
    g_new = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    g_old = [torch.tensor([-1.0, 0.0]), torch.tensor([1.0])]
    projected, cos, dot = project_conflict(g_new, g_old)
    # g_new - (-1 / 2) g_old = (0.5, 1 | 0.5)
    assert torch.equal(projected[0], torch.tensor([0.5, 1.0]))
    assert torch.equal(projected[1], torch.tensor([0.5]))
    assert cos.item() == pytest.approx(-0.5) and dot.item() == -1.0
    # not conflicting: g_old = (1, 0 | 1): dot 1, g_new returned untouched
    g_old = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])]
    projected, cos, _ = project_conflict(g_new, g_old)
    assert all(torch.equal(a, b) for a, b in zip(projected, g_new, strict=True))
    assert cos.item() == pytest.approx(0.5)


def test_projected_gradient_never_conflicts():
    gen = torch.Generator().manual_seed(0)
    conflicted = 0
    for _ in range(200):
        g_new = [torch.randn(7, generator=gen), torch.randn(3, 2, generator=gen)]
        g_old = [torch.randn(7, generator=gen), torch.randn(3, 2, generator=gen)]
        projected, _, dot = project_conflict(g_new, g_old)
        after = sum((a * b).sum() for a, b in zip(projected, g_old, strict=True))
        assert after.item() >= -1e-5
        conflicted += dot.item() < 0
    assert 50 < conflicted < 150  # both branches ran


def test_plwf_step_with_er_is_projected_new_gradient_plus_distillation_gradient():
    """With ER, g_new is the gradient of ER's loss (current and replayed samples); the step
    uses project(g_new, g_old) + g_old, and the logged cosine and conflict flag match."""
    method, stream = make(PLwF(), "class_il", ER, replay_batch_size=10)
    plwf = method.plugins[0]
    train_task(method, stream.tasks[0])
    train_task(method, stream.tasks[1])
    method.begin_task(stream.tasks[2])
    params = list(method.trainable_parameters())
    steps_before, flops_before = plwf.steps, method.counter.components["credit_assignment"]
    checked = 0
    for s in range(4):
        batch = batch_of(stream.tasks[2], s)
        rng = method.memory.generator.get_state()  # the same replayed samples here and in observe
        g_new = torch.autograd.grad(sum(method.loss(batch).values()), params)
        x = method.preprocess(batch.x)
        logits = method.model(x)
        # the mean over the 2 snapshots, each on its own task's classes; class-IL weight 1
        kd = sum(kd_loss(logits[:, 2 * t : 2 * t + 2], snap(x)[:, 2 * t : 2 * t + 2], 2)
                 for t, snap in plwf.snapshots) / 2
        g_old = torch.autograd.grad(kd, params)
        expected, cos, dot = project_conflict(list(g_new), list(g_old))
        expected = [a + b for a, b in zip(expected, g_old, strict=True)]
        seen = []
        step = method.optimizer.step
        method.optimizer.step = lambda seen=seen: seen.extend(p.grad.clone() for p in params)
        method.memory.generator.set_state(rng)
        out = method.observe(batch)
        method.optimizer.step = step
        step()  # the optimiser step observe skipped
        for got, want in zip(seen, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert out["terms"]["plwf_cos"].item() == pytest.approx(cos.item(), abs=1e-5)
        assert out["terms"]["plwf_conflict"].item() == float(dot.item() < 0)
        assert out["terms"]["plwf"].item() == pytest.approx(kd.item(), rel=1e-5)
        checked += 1
    assert plwf.steps - steps_before == checked
    assert 0.0 <= plwf.conflict_fraction() <= 1.0
    # the credit-assignment FLOPs: 9 per trainable parameter and step
    n = sum(p.numel() for p in params)
    assert method.counter.components["credit_assignment"] - flops_before == 9 * n * checked


@pytest.mark.parametrize("plugin", [LwF, PLwF])
def test_state_round_trip_gives_the_same_teachers_and_loss(plugin):
    method, stream = make(plugin())
    train_task(method, stream.tasks[0])
    train_task(method, stream.tasks[1])
    state = method.plugins[0].state_dict()
    fresh, _ = make(plugin())
    fresh.model.load_state_dict(method.model.state_dict())
    fresh.plugins[0].load_state_dict(state)
    for m in (method, fresh):
        m.begin_task(stream.tasks[2])
    batch = batch_of(stream.tasks[2])
    a, b = method.plugins[0].loss(batch), fresh.plugins[0].loss(batch)
    name = plugin.__name__.lower()
    assert a[name].item() == pytest.approx(b[name].item(), rel=1e-6)
    assert fresh.plugins[0].state_dict().keys() == state.keys()


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="plugins.lwf.temperature"):
        LwF(temperature=0)
    with pytest.raises(ValueError, match="plugins.plwf.alpha"):
        PLwF(alpha=-1)


def test_presets_and_composition_with_replay():
    cfg = compose_config(["method=lwf"])
    assert cfg.method.name == "lwf" and list(cfg.plugins) == ["lwf"]
    cfg = compose_config(["method=er", "plugin=[lwf]", "plugins.lwf.alpha=1"])
    assert cfg.method.name == "er" and cfg.plugins.lwf.alpha == 1.0
    cfg = compose_config(["method=plwf", "plugins.plwf.credit_assignment=false"])
    assert cfg.method.name == "plwf" and cfg.plugins.plwf.credit_assignment is False


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
def test_resumed_plwf_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, Finetune,
        ["method=plwf", "scenario=task_il", "budget.epochs=null", "budget.iters=20",
         "eval.every=0"], stop_at=45)
    assert summary["resumed_after_task"] == 1
    assert summary["flops_teacher"] == ref["flops_teacher"]


@needs_mnist
@pytest.mark.slow
def test_lwf_beats_finetune_on_split_mnist_task_il(run_job):
    """Three-scenarios protocol with 300 iterations per task (about 1 min on 2 busy CPU cores)."""
    common = ["experiment=three_scenarios_split", "scenario=task_il", "budget.iters=300",
              "eval.every=0"]
    finetune, _ = run_job(*common, "method=finetune")
    lwf, _ = run_job(*common, "method=lwf")
    assert lwf["acc_task_il"] > finetune["acc_task_il"] + 0.02
    assert lwf["flops_teacher"] > 0


def test_lwf_on_finetune_reuses_the_methods_forward_and_er_pays_an_extra_pass():
    """Finetune's pass is on the current batch itself: LwF adds no model pass; ER's pass
    holds replayed samples too, so LwF's pass on the current batch is an extra one."""
    # 10 samples x (forward + weight gradients + input gradients above the first layer)
    per_step = 10 * 2 * (3 * (16 * 8 + 8 * 8 + 8 * 6) - 16 * 8)
    for method_cls, extra in [(Finetune, 0), (ER, per_step)]:
        method, stream = make(LwF(), method_cls=method_cls)
        train_task(method, stream.tasks[0])
        before = dict(method.counter.components)
        train_task(method, stream.tasks[1])
        assert method.counter.components.get("distillation", 0) - before.get(
            "distillation", 0) == 5 * extra
