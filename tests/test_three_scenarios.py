"""The published "three scenarios" protocols: the input switch (raw pixels, 32x32 padding),
split MNIST in domain-IL, and the presets' per-scenario values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl_bench.data.benchmarks import permuted_stream, split_stream
from cl_bench.data.datasets import load_dataset
from cl_bench.data.transforms import Preprocess
from cl_bench.experiment import build_stream
from conftest import compose_config


def test_normalize_none_feeds_pixels_in_0_1_and_standard_standardises():
    raw = load_dataset("digits", None)
    for normalize in ("none", "standard"):
        stream = split_stream(name="d", dataset="digits", n_tasks=5, normalize=normalize)
        x = stream.tasks[0].train_x[:50]
        fed = Preprocess(stream.mean, stream.std, "cpu")(x)
        if normalize == "none":
            assert torch.allclose(fed, x.float() / 255)
            assert fed.min() >= 0 and fed.max() <= 1
        else:
            mean, std = raw.info.mean[0], raw.info.std[0]
            assert torch.allclose(fed, (x.float() / 255 - mean) / std, atol=1e-6)


def test_pad_then_permute():
    raw = load_dataset("digits", None)  # 8x8 images
    stream = permuted_stream(name="p", dataset="digits", n_tasks=2, pad=2, normalize="none",
                             permutation_seed=3)
    assert stream.input_shape == (1, 12, 12)
    gen = torch.Generator().manual_seed(3)
    padded = F.pad(raw.train_x, (2, 2, 2, 2)).flatten(1)
    for task in stream.tasks:  # one permutation of the 144 padded pixels per task, in order
        perm = torch.randperm(144, generator=gen)
        assert torch.equal(task.train_x.flatten(1), padded[:, perm])
    # the padding is permuted too: the zero border does not stay on the border
    border = torch.ones(12, 12, dtype=torch.bool)
    border[2:10, 2:10] = False
    assert stream.tasks[1].train_x.flatten(1)[:, border.flatten()].any()


def test_bad_switch_values_name_the_key():
    with pytest.raises(ValueError, match="benchmark.normalize"):
        split_stream(name="d", dataset="digits", n_tasks=5, normalize="minmax")
    with pytest.raises(ValueError, match="benchmark.pad"):
        split_stream(name="d", dataset="digits", n_tasks=5, pad=-1)


def test_split_benchmark_in_domain_il_shares_one_head():
    stream = build_stream(compose_config(["scenario=domain_il"]))  # digits, 5 tasks x 2
    class_il = build_stream(compose_config([]))
    assert stream.scenarios == ("domain_il",) and stream.n_classes == 2
    for task, same in zip(stream.tasks, class_il.tasks, strict=True):
        assert task.classes == [0, 1]
        assert torch.equal(task.train_y, same.train_y - 2 * task.id)  # digit parity position
        assert torch.equal(task.train_x, same.train_x)


@pytest.mark.parametrize(("scenario", "ewc", "online", "gamma", "si"), [
    ("task_il", 1e7, 1e8, 0.8, 50.0),
    ("domain_il", 1e6, 1e8, 0.7, 500.0),
    ("class_il", 1e8, 1e9, 0.8, 0.5),
])
def test_split_preset_takes_the_2019_values_of_the_runs_scenario(scenario, ewc, online, gamma,
                                                                  si):
    def cfg(method, experiment="three_scenarios_split"):
        return compose_config([f"experiment={experiment}", f"scenario={scenario}",
                               f"method={method}"])

    c = cfg("ewc")
    assert c.plugins.ewc.strength == ewc and c.plugins.ewc.fisher_labels == "pred"
    assert not c.plugins.ewc.online
    c = cfg("online_ewc")
    assert (c.plugins.ewc.strength, c.plugins.ewc.gamma) == (online, gamma)
    assert c.plugins.ewc.online
    assert cfg("si").plugins.si.strength == si
    lwf = cfg("lwf").plugins.lwf
    assert (lwf.weighting, lwf.t2_scaling) == ("tasks", True)
    c = cfg("ewc")  # the protocol itself
    assert (c.benchmark.name, c.benchmark.normalize, list(c.model.hidden), c.optimizer.lr,
            c.budget.iters, c.budget.batch_size) == ("split_mnist", "none", [400, 400], 1e-3,
                                                    2000, 128)
    # the 2022 alternative: the current code's values and its Fisher / LwF
    c = cfg("ewc", "three_scenarios_split_2022")
    assert c.plugins.ewc.strength == {"task_il": 1e5, "domain_il": 1e10,
                                      "class_il": 1e9}[scenario]
    assert c.plugins.ewc.fisher_labels == "all"
    assert cfg("lwf", "three_scenarios_split_2022").plugins.lwf.weighting == "scenario"


def test_permuted_preset_is_the_published_protocol():
    c = compose_config(["experiment=three_scenarios_permuted", "method=ewc"])
    assert (c.benchmark.name, c.benchmark.normalize, c.benchmark.pad, c.benchmark.n_tasks,
            list(c.model.hidden), c.optimizer.lr, c.budget.iters, c.budget.batch_size) == (
        "permuted_mnist", "none", 2, 10, [1000, 1000], 1e-4, 5000, 128)
    assert c.plugins.ewc.strength == 500
    cheap = compose_config(["experiment=three_scenarios_permuted_cpu", "method=ewc"])
    assert cheap.budget.iters == 2000 and list(cheap.model.hidden) == [400, 400]
    # a method without 2019 values keeps its preset
    assert compose_config(["experiment=three_scenarios_permuted",
                           "method=mas"]).plugins.mas == compose_config(["method=mas"]).plugins.mas


def test_reference_class_order_per_seed():
    """van de Ven's code relabels y -> p[y], p = np.random.permutation(10) right after
    np.random.seed(seed) (seed 0: no shuffle); seed 2 draws p = [4, 1, 5, 0, 7, 2, 3, 6, 9, 8],
    so task 1 holds the digits p maps to 0 and 1: 3 and 1."""
    def order(seed):
        return list(compose_config([
            "experiment=three_scenarios_split", f"seed={seed}", "benchmark.shuffle_classes=false",
            "benchmark.class_order='${clbench_three_scenarios_order:${seed},10}'",
        ]).benchmark.class_order)
    assert order(0) == list(range(10))
    assert order(2) == [3, 1, 5, 6, 0, 2, 7, 4, 9, 8]


def test_class_il_loss_over_the_seen_classes_only_with_outputs_seen():
    """`method.outputs=seen`: the class-IL cross-entropy's softmax covers the classes seen so
    far (van de Ven's active classes), by hand on task 0 of a 4-class stream."""
    import functools

    from cl_bench.memory.base import NoMemory
    from cl_bench.methods.finetune import Finetune
    from cl_bench.models.mlp import MLP
    from conftest import tiny_stream

    stream = tiny_stream()
    methods = {o: Finetune(model=MLP((1, 4, 4), 4, hidden=[8]), memory=NoMemory(),
                           optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                           preprocess=Preprocess((0.5,), (0.3,), "cpu"),
                           class_mask=stream.class_mask(), scenario="class_il", outputs=o)
               for o in ("all", "seen")}
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y, t = torch.tensor([1]), torch.tensor([0])
    for method in methods.values():
        method.begin_task(stream.tasks[0])
    seen = methods["seen"].cross_entropy(logits, y, t)
    assert seen.item() == pytest.approx(-(2.0 - torch.logsumexp(logits[0, :2], 0)).item())
    everything = methods["all"].cross_entropy(logits, y, t)
    assert everything.item() == pytest.approx(-(2.0 - torch.logsumexp(logits[0], 0)).item())
    with pytest.raises(Exception, match="method.outputs='some'"):
        Finetune(model=MLP((1, 4, 4), 4), memory=NoMemory(), outputs="some",
                 optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                 preprocess=Preprocess((0.5,), (0.3,), "cpu"),
                 class_mask=stream.class_mask(), scenario="class_il")
