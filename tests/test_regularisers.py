"""Importance-based regularisers (EWC, online EWC, SI, MAS, IMM): importance, penalties and
merges against hand-computed values on tiny models, checkpoint round trips, and EWC / SI
beating finetuning on split MNIST task-IL."""

import functools
import io

import pytest
import torch
from torch import nn

from cl_bench.data.batch import Batch
from cl_bench.data.stream import Task
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.base import NoMemory
from cl_bench.methods.finetune import Finetune
from cl_bench.models.mlp import MLP
from cl_bench.plugins import importance
from cl_bench.plugins.ewc import EWC
from cl_bench.plugins.imm import IMM
from cl_bench.plugins.mas import MAS
from cl_bench.plugins.si import SI
from conftest import compose_config, interrupt_and_resume, needs_mnist

IDENTITY = Preprocess((0.0,), (1 / 255,), "cpu")  # uint8 x -> float x


class LinearNet(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.head = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.head(x.flatten(1))


def class_mask(n_tasks, per_task):
    mask = torch.zeros(n_tasks, n_tasks * per_task, dtype=torch.bool)
    for t in range(n_tasks):
        mask[t, t * per_task:(t + 1) * per_task] = True
    return mask


def make(model, plugins=(), scenario="task_il", n_tasks=2, per_task=2, lr=0.1,
         preprocess=IDENTITY, method_cls=Finetune):
    return method_cls(model=model, optimizer=functools.partial(torch.optim.SGD, lr=lr),
                      memory=NoMemory(), preprocess=preprocess,
                      class_mask=class_mask(n_tasks, per_task), scenario=scenario,
                      plugins=list(plugins))


def task_of(task_id, x, y):
    x = torch.tensor(x, dtype=torch.uint8).view(len(x), 1, 1, -1)
    y = torch.tensor(y)
    return Task(task_id, sorted(set(y.tolist())), x, y, x, y)


def set_linear(model, weight, bias):
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(weight, dtype=torch.float))
        model.head.bias.copy_(torch.tensor(bias, dtype=torch.float))


# x = [1, 2] and [3, 0]: mean x_0^2 = 5, mean x_1^2 = 2
SAMPLES = ([[1, 2], [3, 0]], [0, 1])


def test_fisher_of_a_linear_softmax_model_by_hand():
    # W = 0, b = 0: over the active classes {0, 1} p = (1/2, 1/2, 0). Each label c gives
    # d(-log p_c)/dz = p - e_c = (-+1/2, +-1/2, 0); squared (1/4, 1/4, 0), weight 1/2 each:
    # F_b = (1/4, 1/4, 0) and F_W[j, k] = F_b[j] * mean x_k^2
    model = LinearNet(2, 3)
    set_linear(model, [[0, 0]] * 3, [0, 0, 0])
    method = make(model, per_task=1, n_tasks=3)
    method.class_mask[0, 1] = True  # task 0 owns classes 0 and 1
    task = task_of(0, *SAMPLES)
    method.begin_task(task)
    fisher = importance.fisher(method, task)
    assert torch.allclose(fisher["head.bias"], torch.tensor([0.25, 0.25, 0.0]))
    assert torch.allclose(fisher["head.weight"],
                          torch.tensor([[1.25, 0.5], [1.25, 0.5], [0.0, 0.0]]), rtol=1e-5)
    # forward 2*2*3 = 12 FLOPs per sample, backward 12 (weight gradient only) per label:
    # 2 samples x (12 + 2 labels x 12)
    assert method.counter.components == {"importance": 72}
    assert method.counter.train_flops == 72


def test_empirical_and_predicted_label_fisher_by_hand():
    # W = [[1, 0], [0, 1]], b = 0, classes {0, 1}: z = x. Sample [1, 2]: p = softmax(1, 2);
    # sample [3, 0]: p = softmax(3, 0). "true" uses labels (0, 1), "pred" the arg-max (1, 0).
    model = LinearNet(2, 2)
    set_linear(model, [[1, 0], [0, 1]], [0, 0])
    method = make(model, n_tasks=1)
    task = task_of(0, *SAMPLES)
    method.begin_task(task)
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    p = torch.softmax(x, dim=1)
    for labels, y in (("true", [0, 1]), ("pred", [1, 0])):
        u = p - torch.eye(2)[y]  # per-sample gradient of -log p_y w.r.t. the logits
        expected_w = (u.pow(2).unsqueeze(2) * x.pow(2).unsqueeze(1)).mean(0)
        fisher = importance.fisher(method, task, labels=labels)
        assert torch.allclose(fisher["head.bias"], u.pow(2).mean(0), rtol=1e-5)
        assert torch.allclose(fisher["head.weight"], expected_w, rtol=1e-5)


def test_mas_importance_of_a_linear_model_by_hand():
    # W = [[1, 0], [0, 1], [1, 1]], b = 0, active classes {0, 1} (task-IL task 0):
    # z = (1, 2, .) and (3, 0, .); d||z||^2/dW[j, k] = 2 z_j x_k, d/db_j = 2 z_j
    model = LinearNet(2, 3)
    set_linear(model, [[1, 0], [0, 1], [1, 1]], [0, 0, 0])
    method = make(model, per_task=1, n_tasks=3)
    method.class_mask[0, 1] = True
    task = task_of(0, *SAMPLES)
    method.begin_task(task)
    omega = importance.mas(method, task)
    assert torch.allclose(omega["head.bias"], torch.tensor([4.0, 2.0, 0.0]), rtol=1e-5)
    assert torch.allclose(omega["head.weight"],
                          torch.tensor([[10.0, 2.0], [2.0, 4.0], [0.0, 0.0]]), rtol=1e-5)


@pytest.mark.parametrize("scenario", ["class_il", "task_il", "domain_il"])
def test_outer_product_path_equals_per_sample_autograd(scenario, monkeypatch):
    torch.manual_seed(0)
    model = MLP((1, 2, 3), 6, hidden=[5, 4])
    method = make(model, scenario=scenario, n_tasks=3, per_task=2,
                  preprocess=Preprocess((0.5,), (0.3,), "cpu"))
    x = torch.randint(0, 256, (40, 1, 2, 3), dtype=torch.uint8)
    task = Task(1, [2, 3], x, torch.randint(2, 4, (40,)), x, x[:, 0, 0, 0].long() % 2)
    method.begin_task(Task(0, [0, 1], x, x[:, 0, 0, 0].long() % 2, x, x[:, 0, 0, 0].long()))
    method.begin_task(task)
    assert importance._outer_products_apply(model, IDENTITY(x[:1]), importance.trainable(model))
    fast = [importance.fisher(method, task, labels=lab) for lab in ("all", "true", "pred")]
    fast.append(importance.mas(method, task))
    fast_flops = method.counter.components["importance"]
    monkeypatch.setattr(importance, "_outer_products_apply", lambda *args: False)
    slow = [importance.fisher(method, task, labels=lab) for lab in ("all", "true", "pred")]
    slow.append(importance.mas(method, task))
    for a, b in zip(fast, slow, strict=True):
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-7), name
    assert method.counter.components["importance"] == 2 * fast_flops


def test_frozen_layers_get_no_importance(monkeypatch):
    torch.manual_seed(0)
    model = MLP((1, 2, 3), 4, hidden=[5, 4])
    model.features[1].requires_grad_(False)
    method = make(model, preprocess=Preprocess((0.5,), (0.3,), "cpu"))
    x = torch.randint(0, 256, (30, 1, 2, 3), dtype=torch.uint8)
    task = Task(0, [0, 1], x, torch.randint(0, 2, (30,)), x, x[:, 0, 0, 0].long())
    method.begin_task(task)
    fast = importance.fisher(method, task)
    assert set(fast) == {"features.3.weight", "features.3.bias", "head.weight", "head.bias"}
    monkeypatch.setattr(importance, "_outer_products_apply", lambda *args: False)
    slow = importance.fisher(method, task)
    assert all(torch.allclose(fast[n], slow[n], rtol=1e-4, atol=1e-7) for n in fast)


def test_ewc_penalty_by_hand():
    # the Fisher of the first test (sum 4 over the 6 parameters); moving every parameter by
    # +1 from the anchor costs strength / 2 * 4
    model = LinearNet(2, 3)
    set_linear(model, [[0, 0]] * 3, [0, 0, 0])
    ewc = EWC(strength=3.0)
    method = make(model, [ewc], per_task=1, n_tasks=3)
    method.class_mask[0, 1] = True
    task = task_of(0, *SAMPLES)
    method.begin_task(task)
    assert ewc.loss(None) == {}
    method.end_task(task)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert ewc.loss(None)["ewc"].item() == pytest.approx(0.5 * 3.0 * 4.0, rel=1e-5)


def test_offline_ewc_keeps_one_term_per_task_online_one_running_fisher():
    torch.manual_seed(0)
    gamma = 0.7
    fishers = {}
    for online in (False, True):
        torch.manual_seed(0)
        model = LinearNet(2, 6)
        ewc = EWC(strength=1.0, online=online, gamma=gamma if online else 1.0)
        method = make(model, [ewc], n_tasks=3)
        tasks = [task_of(0, [[1, 2], [3, 0]], [0, 1]), task_of(1, [[2, 2], [0, 5]], [2, 3])]
        anchors = []
        for task in tasks:
            method.begin_task(task)
            with torch.no_grad():
                model.head.weight.add_(0.5)  # stands in for training
            fishers[online, task.id] = importance.fisher(method, task)
            anchors.append(importance.snapshot(model))
            method.end_task(task)
        if online:
            assert len(ewc.terms) == 1
            anchor, running = ewc.terms[0]
            for n in running:
                expected = gamma * fishers[True, 0][n] + fishers[True, 1][n]
                assert torch.allclose(running[n], expected)
                assert torch.equal(anchor[n], anchors[1][n])
            # the penalty weighs the running Fisher by gamma (Schwarz et al.)
            assert ewc.penalty().item() == 0.0
            with torch.no_grad():
                model.head.bias.add_(1.0)
            expected = gamma * sum(running["head.bias"])
            assert ewc.penalty().item() == pytest.approx(expected.item(), rel=1e-5)
        else:
            assert len(ewc.terms) == 2
            for t, (anchor, fisher) in enumerate(ewc.terms):
                assert all(torch.equal(anchor[n], anchors[t][n]) for n in anchor)
                assert all(torch.allclose(fisher[n], fishers[False, t][n]) for n in fisher)


def test_no_importance_after_the_last_task():
    model = LinearNet(2, 4)
    ewc, mas = EWC(), MAS()
    method = make(model, [ewc, mas])
    for t in range(2):
        task = task_of(t, [[1, 2], [3, 0]], [2 * t, 2 * t + 1])
        method.begin_task(task)
        method.end_task(task)
    assert len(ewc.terms) == 1 and mas.omega
    assert method.counter.components["importance"] > 0


class Theta(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([value]))

    def forward(self, x):
        return x.flatten(1)[:, :2] * 0 + self.theta


class Quadratic(Finetune):
    """Loss a/2 theta^2 (its minimum at 0), whatever the batch."""

    a = 2.0

    def loss(self, batch):
        return {"q": 0.5 * self.a * self.model.theta.pow(2).sum()}


def test_si_omega_is_the_path_integral_on_a_quadratic():
    # SGD on L = a/2 theta^2: theta_k = r^k theta_0, r = 1 - lr a, g_k = a theta_k and
    # step_k = -lr g_k, so w = sum_k lr g_k^2 = lr a^2 theta_0^2 (1 - r^2n) / (1 - r^2);
    # as lr -> 0 this tends to the loss decrease L(theta_0) - L(theta_n)
    theta0, lr, steps, xi = 1.5, 0.01, 200, 0.1
    si = SI(strength=1.0, xi=xi)
    method = make(Theta(theta0), [si], lr=lr, method_cls=Quadratic)
    task = task_of(0, [[1, 2]], [0])
    method.begin_task(task)
    batch = Batch(task.train_x, task.train_y, torch.zeros(1, dtype=torch.long))
    for _ in range(steps):
        method.observe(batch)
    a, r = Quadratic.a, 1 - lr * Quadratic.a
    theta_n = theta0 * r**steps
    assert method.model.theta.item() == pytest.approx(theta_n, rel=1e-4)
    w = lr * a**2 * theta0**2 * (1 - r ** (2 * steps)) / (1 - r**2)
    assert si.path["theta"].item() == pytest.approx(w, rel=1e-4)
    loss_drop = 0.5 * a * (theta0**2 - theta_n**2)
    assert w == pytest.approx(loss_drop, rel=0.02)
    method.end_task(task)
    assert si.omega["theta"].item() == pytest.approx(w / ((theta_n - theta0) ** 2 + xi), rel=1e-4)
    assert si.anchor["theta"].item() == pytest.approx(theta_n, rel=1e-5)
    # the next task is pulled back to theta_n with strength * Omega * delta^2
    with torch.no_grad():
        method.model.theta.add_(1.0)
    assert si.loss(None)["si"].item() == pytest.approx(si.omega["theta"].item(), rel=1e-5)


def two_solutions(scenario="class_il", **kw):
    model = LinearNet(1, 4)
    imm = IMM(**kw)
    make(model, [imm], scenario=scenario)
    imm.solutions = [{"head.weight": torch.full((4, 1), 1.0), "head.bias": torch.zeros(4)},
                     {"head.weight": torch.full((4, 1), 3.0), "head.bias": torch.ones(4)}]
    imm.fishers = [{"head.weight": torch.tensor([[3.0], [0.0], [1.0], [0.0]]),
                    "head.bias": torch.zeros(4)},
                   {"head.weight": torch.tensor([[1.0], [0.0], [0.0], [2.0]]),
                    "head.bias": torch.zeros(4)}]
    return imm


def test_imm_merges_by_hand():
    merged = two_solutions(mode="mean").merge()
    assert torch.allclose(merged["head.weight"], torch.full((4, 1), 2.0))
    assert torch.allclose(merged["head.bias"], torch.full((4,), 0.5))
    # Fisher-weighted: (3*1 + 1*3) / 4 = 1.5; both zero: the plain mean 2 (eps, no 0/0);
    # (1*1 + ~0*3) / 1 = 1; (~0*1 + 2*3) / 2 = 3
    merged = two_solutions(mode="mode").merge()
    assert torch.allclose(merged["head.weight"], torch.tensor([[1.5], [2.0], [1.0], [3.0]]))
    assert torch.allclose(merged["head.bias"], torch.full((4,), 0.5))
    assert torch.isfinite(merged["head.bias"]).all()
    # alpha = (3, 1): mean 3/4 * 1 + 1/4 * 3
    merged = two_solutions(mode="mean", alpha=[3.0, 1.0]).merge()
    assert torch.allclose(merged["head.weight"], torch.full((4, 1), 1.5))
    # task-IL: the output layer is the last solution's
    merged = two_solutions(scenario="task_il", mode="mean").merge()
    assert torch.allclose(merged["head.weight"], torch.full((4, 1), 3.0))


def test_imm_trains_from_the_last_solution_and_deploys_the_merge():
    torch.manual_seed(0)
    model = MLP((1, 1, 2), 4, hidden=[3])
    imm = IMM(mode="mean", l2_transfer=0.0)
    method = make(model, [imm], scenario="class_il")
    tasks = [task_of(0, [[1, 2], [3, 0]], [0, 1]), task_of(1, [[2, 2], [0, 5]], [2, 3])]
    for task in tasks:
        method.begin_task(task)
        if task.id == 1:  # weight transfer: task 1 starts from theta_0 itself
            assert all(torch.equal(p, imm.solutions[0][n])
                       for n, p in importance.trainable(model).items())
        batch = Batch(task.train_x, task.train_y, torch.full((2,), task.id))
        for _ in range(3):
            method.observe(batch)
        method.end_task(task)
    theta0, theta1 = imm.solutions
    for n, p in importance.trainable(model).items():
        assert torch.allclose(p, (theta0[n] + theta1[n]) / 2)
        assert not torch.equal(theta0[n], theta1[n])


def test_imm_l2_transfer_by_hand():
    model = LinearNet(1, 4)
    imm = IMM(l2_transfer=0.5)
    make(model, [imm], scenario="class_il")
    imm.solutions = [{n: p.detach() - 2.0 for n, p in model.named_parameters()}]
    # 8 parameters, each 2 away: 0.5 * 8 * 4 (no 1/2)
    assert imm.loss(None)["l2_transfer"].item() == pytest.approx(16.0)


def plugin_factories():
    return {"ewc": lambda: EWC(strength=10.0), "online_ewc": lambda: EWC(10.0, online=True,
            gamma=0.9), "si": lambda: SI(strength=1.0), "mas": lambda: MAS(strength=1.0),
            "imm_mode": lambda: IMM(mode="mode", l2_transfer=0.1)}


@pytest.mark.parametrize("name", list(plugin_factories()))
def test_state_dict_round_trip_gives_identical_penalties(name):
    make_plugin = plugin_factories()[name]
    tasks = [task_of(t, [[1 + t, 2], [3, t], [0, 4]], [2 * t, 2 * t + 1, 2 * t])
             for t in range(3)]

    def batch(task):
        return Batch(task.train_x, task.train_y, torch.full((3,), task.id))

    torch.manual_seed(0)
    a_plugin = make_plugin()
    a = make(MLP((1, 1, 2), 6, hidden=[5]), [a_plugin], n_tasks=3)
    for task in tasks[:2]:
        a.begin_task(task)
        for _ in range(4):
            a.observe(batch(task))
        a.end_task(task)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # different initial weights: everything must come from the state
    b_plugin = make_plugin()
    b = make(MLP((1, 1, 2), 6, hidden=[5]), [b_plugin], n_tasks=3)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    for task in tasks[:2]:
        b.skip_task(task)
    for m in (a, b):
        m.begin_task(tasks[2])
    terms = [m.observe(batch(tasks[2])) for m in (a, b)]
    assert terms[0]["loss"].item() > 0
    assert torch.equal(terms[0]["loss"], terms[1]["loss"])
    for _ in range(3):
        assert torch.equal(a.observe(batch(tasks[2]))["loss"], b.observe(batch(tasks[2]))["loss"])
    a.end_task(tasks[2])
    b.end_task(tasks[2])
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_resumed_run_continues_exactly(tmp_path, monkeypatch):
    # every plugin's state through the runner's checkpoint: stopped in task 2, resumed
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, Finetune,
        ["scenario=task_il", "plugin=[ewc,si,mas,imm]", "plugins.imm.mode=mode",
         "plugins.ewc.online=true", "plugins.ewc.gamma=0.9", "plugins.ewc.strength=10",
         "plugins.si.strength=1", "budget.epochs=null",
         "budget.iters=15", "eval.every=0"], stop_at=40)
    assert summary["resumed_after_task"] == 1
    assert summary["flops_importance"] == ref["flops_importance"] > 0


def test_every_scenario_supported_and_knobs_are_constructor_arguments():
    import inspect

    for cls, knob in ((EWC, "strength"), (SI, "strength"), (MAS, "strength"),
                      (IMM, "l2_transfer")):
        assert set(cls.supported_scenarios) == {"task_il", "class_il", "domain_il"}
        assert cls.stability_knobs == (knob,)
        assert knob in inspect.signature(cls).parameters


@pytest.mark.parametrize("build, key", [
    (lambda: EWC(gamma=0.9), "plugins.ewc.gamma"),
    (lambda: EWC(fisher_labels="empirical"), "plugins.ewc.fisher_labels"),
    (lambda: EWC(fisher_samples=0), "plugins.ewc.fisher_samples"),
    (lambda: SI(xi=0.0), "plugins.si.xi"),
    (lambda: MAS(strength=-1.0), "plugins.mas.strength"),
    (lambda: IMM(mode="median"), "plugins.imm.mode"),
    (lambda: make(LinearNet(1, 4), [IMM(alpha=[1.0, 2.0, 3.0])]), "plugins.imm.alpha"),
])
def test_bad_values_fail_before_training_naming_the_key(build, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build()


def test_presets_compose_and_plugins_compose_with_replay():
    # class-IL on digits: the presets' split-MNIST class-IL lambda (tests/test_presets.py)
    for preset, plugin, extra in (("ewc", "ewc", {"online": False, "strength": 1e9}),
                                  ("online_ewc", "ewc", {"online": True, "strength": 1e9}),
                                  ("si", "si", {}), ("mas", "mas", {}),
                                  ("imm_mean", "imm", {"mode": "mean"}),
                                  ("imm_mode", "imm", {"mode": "mode"})):
        cfg = compose_config([f"method={preset}"])
        assert cfg.method.name == preset
        assert cfg.method._target_ == "cl_bench.methods.finetune.Finetune"
        assert list(cfg.plugins) == [plugin]
        assert all(cfg.plugins[plugin][k] == v for k, v in extra.items())
    cfg = compose_config(["method=er", "plugin=[ewc,si]", "plugins.si.strength=5"])
    assert cfg.method.name == "er" and list(cfg.plugins) == ["ewc", "si"]
    assert cfg.plugins.si.strength == 5 and cfg.plugins.ewc.strength == 100  # SGD-safe default


@needs_mnist
def test_er_with_ewc_runs_and_counts_importance_flops(run_job):
    summary, run_dir = run_job("experiment=three_scenarios_split", "scenario=task_il",
                               "method=er", "plugin=[ewc]", "budget.iters=10",
                               "plugins.ewc.fisher_samples=100", "eval.every=0")
    assert summary["status"] == "completed"
    # 4 estimates (none after the last task) of 100 samples, 2 labels each, on 784-400-400-10
    f = 2 * (784 * 400 + 400 * 400 + 400 * 10)
    b = 2 * (784 * 400) + 2 * 2 * (400 * 400 + 400 * 10)
    assert summary["flops_importance"] == 4 * 100 * (f + 2 * b)
    import pandas as pd

    assert (pd.read_csv(run_dir / "train.csv")["loss_ewc"].dropna() > 0).any()


@needs_mnist
@pytest.mark.slow
def test_ewc_and_si_beat_finetune_on_split_mnist_task_il(run_job):
    common = ("experiment=three_scenarios_split", "scenario=task_il", "budget.iters=300",
              "eval.every=0")
    finetune, _ = run_job(*common, "method=finetune")
    ewc, _ = run_job(*common, "method=ewc")
    si, _ = run_job(*common, "method=si")
    assert ewc["acc_task_il"] > finetune["acc_task_il"] + 0.02
    assert si["acc_task_il"] > finetune["acc_task_il"] + 0.02
