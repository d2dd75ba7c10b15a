"""The energy-based classifier (Li, Du, van de Ven & Mordatch, CoLLAs 2022): batched
energies, the pair loss by hand, where negatives come from, prediction, a real run."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.memory.base import Memory
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.ebm import EBM
from cl_bench.models.ebm import EBMMLP, EBMGated
from conftest import needs_mnist

# two tasks of three classes each
CLASS_MASK = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)


def energy_by_hand(model, x, label):
    """E(x, y) of one sample and one label, written out."""
    gate = F.normalize(model.label_embedding.weight[label], dim=0)
    h = x.flatten() @ model.fc1.weight.T + model.fc1.bias
    h = torch.relu(h + h * gate)
    if model.fc2 is not None:
        h = h @ model.fc2.weight.T + model.fc2.bias
        h = torch.relu(h + h * gate)
    return h @ model.energy.weight[0] + model.energy.bias[0]


def gated_energy_by_hand(model, x, label):
    """E(x, y) of the gated CIFAR-100 network, one sample and one label."""
    h = x.flatten()
    for i, fc in enumerate(model.fcs):
        h = torch.relu((h @ fc.weight.T + fc.bias) * getattr(model, f"gate{i}")[label])
    return h @ model.energy.weight[0] + model.energy.bias[0]


def build(negatives="task", layers=1, memory=None, **options):
    torch.manual_seed(0)
    return EBM(model=EBMMLP((1, 4, 4), 6, hidden=8, layers=layers),
               memory=memory if memory is not None else Memory(),
               optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
               preprocess=Preprocess((0.5,), (0.3,), "cpu"), class_mask=CLASS_MASK,
               scenario="class_il", negatives=negatives, **options)


def batch(y):
    y = torch.as_tensor(y)
    x = torch.randint(0, 256, (len(y), 1, 4, 4), dtype=torch.uint8)
    return Batch(x, y, torch.zeros_like(y))


@pytest.mark.parametrize("layers", [1, 2])
def test_batched_energies_equal_a_loop_over_labels(layers):
    torch.manual_seed(0)
    model = EBMMLP((1, 4, 4), 6, hidden=8, layers=layers)
    x = torch.randn(5, 1, 4, 4)
    labels = torch.randint(0, 6, (5, 3))
    loop = torch.stack([torch.stack([energy_by_hand(model, x[b], labels[b, k])
                                     for k in range(3)]) for b in range(5)])
    torch.testing.assert_close(model(x, labels), loop)
    every = torch.stack([torch.stack([energy_by_hand(model, x[b], torch.tensor(c))
                                      for c in range(6)]) for b in range(5)])
    torch.testing.assert_close(model(x), every)  # no labels: every class
    torch.testing.assert_close(model(x, torch.tensor([4, 1])), every[:, [4, 1]])


def test_evaluation_energies_are_one_product_and_counted():
    """Without gradients, labels shared by the batch take the factored path
    (1 + g) * ReLU(h): same energies as the loop, FLOPs of fc1 plus one [B,H]x[H,K]."""
    torch.manual_seed(0)
    model = EBMMLP((1, 4, 4), 6, hidden=8)
    x = torch.randn(5, 1, 4, 4)
    labels = torch.tensor([5, 0, 3])
    loop = torch.stack([torch.stack([energy_by_hand(model, x[b], k) for k in labels])
                        for b in range(5)])
    counter = FlopCounter().attach(model)
    with torch.no_grad(), counter.evaluating():
        fast = model(x, labels)
    torch.testing.assert_close(fast, loop)
    torch.testing.assert_close(model(x, labels), loop)  # the broadcast path, with gradients
    assert counter.eval_flops == 2 * 5 * 16 * 8 + 2 * 5 * 3 * 8


def test_gated_network_energies_equal_a_loop_and_its_gates_stay_fixed():
    torch.manual_seed(0)
    model = EBMGated((4, 2, 2), 6, hidden=[16, 12], mask_prob=0.75)
    x = torch.randn(5, 4, 2, 2)
    labels = torch.randint(0, 6, (5, 3))
    loop = torch.stack([torch.stack([gated_energy_by_hand(model, x[b], labels[b, k])
                                     for k in range(3)]) for b in range(5)])
    torch.testing.assert_close(model(x, labels), loop)
    torch.testing.assert_close(model(x)[:, [4, 1]], model(x, torch.tensor([4, 1])))
    gates = [model.gate0.clone(), model.gate1.clone()]
    ebm = EBM(model=model, memory=Memory(), optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
              preprocess=Preprocess((0.5,) * 4, (0.3,) * 4, "cpu"), class_mask=CLASS_MASK,
              scenario="class_il")
    assert [n for n, p in ebm.model.named_parameters() if "gate" in n] == []
    ebm.begin_task(SimpleNamespace(id=0))
    w0 = model.fcs[1].weight.clone()
    for _ in range(3):
        ebm.observe(Batch(torch.randint(0, 256, (8, 4, 2, 2), dtype=torch.uint8),
                          torch.randint(0, 3, (8,)), torch.zeros(8, dtype=torch.long)))
    assert not torch.equal(model.fcs[1].weight, w0)  # it trained ...
    assert torch.equal(model.gate0, gates[0]) and torch.equal(model.gate1, gates[1])  # not these
    assert set(model.state_dict()) >= {"gate0", "gate1"}  # checkpointed with the weights


def test_gated_network_keeps_one_minus_mask_prob_of_the_units_per_class():
    torch.manual_seed(0)
    model = EBMGated((8,), 100, hidden=[2000, 2000])
    kept = model.gate1.mean(1)  # per class: fraction of units on
    assert abs(model.gate0.mean().item() - 0.15) < 0.005 and abs(kept.mean().item() - 0.15) < 0.005
    assert kept.min() > 0.11 and kept.max() < 0.19  # binomial(2000, 0.15): sd 0.008
    assert not torch.equal(model.gate0[0], model.gate0[1])
    with pytest.raises(ValueError, match="model.mask_prob=1"):
        EBMGated((8,), 10, mask_prob=1)


def test_loss_is_the_nll_over_the_positive_and_negative_pair(monkeypatch):
    method = build()
    method.begin_task(SimpleNamespace(id=0))
    b = batch([0, 1, 2, 1])
    negatives = torch.tensor([2, 0, 1, 2])
    monkeypatch.setattr(method, "sample_negatives", lambda y: negatives)
    loss = method.loss(b)["ebm"]
    x = method.preprocess(b.x, train=True)
    by_hand = []
    for i in range(4):
        pos = energy_by_hand(method.model, x[i], b.y[i]).item()
        neg = energy_by_hand(method.model, x[i], negatives[i]).item()
        by_hand.append(pos + math.log(math.exp(-pos) + math.exp(-neg)))
    torch.testing.assert_close(loss.item(), sum(by_hand) / 4)


def spied_negatives(method, monkeypatch):
    drawn = []
    sample = method.sample_negatives

    def spy(y):
        neg = sample(y)
        drawn.append((y.clone(), neg.clone()))
        return neg

    monkeypatch.setattr(method, "sample_negatives", spy)
    return drawn


def test_boundary_aware_negatives_are_the_current_tasks_other_classes(monkeypatch):
    method = build("task")
    drawn = spied_negatives(method, monkeypatch)
    for task in (0, 1):
        method.begin_task(SimpleNamespace(id=task))
        for _ in range(20):
            method.observe(batch(torch.randint(3 * task, 3 * task + 3, (16,))))
    for step, (y, neg) in enumerate(drawn):
        task = step // 20
        assert (neg != y).all()
        assert CLASS_MASK[task][neg].all(), (step, neg)
    negs_of_3 = torch.cat([neg[y == 3] for y, neg in drawn[20:]])
    assert set(negs_of_3.tolist()) == {4, 5}  # uniform over both other classes
    # replayed-looking labels of the earlier task still get negatives of the current one
    y, neg = torch.tensor([0, 1, 3]), method.sample_negatives(torch.tensor([0, 1, 3]))
    assert CLASS_MASK[1][neg].all() and (neg != y).all()


def test_boundary_agnostic_negatives_are_the_batchs_other_labels(monkeypatch):
    method = build("batch")
    drawn = spied_negatives(method, monkeypatch)
    for _ in range(20):
        method.observe(batch(torch.tensor([0, 2, 5, 5, 0, 2, 0, 5])))
    negs = torch.cat([neg for _, neg in drawn])
    labels = torch.cat([y for y, _ in drawn])
    assert (negs != labels).all()
    assert set(negs[labels == 0].tolist()) == {2, 5}
    assert set(negs.tolist()) == {0, 2, 5}


def test_a_batch_of_one_class_pairs_each_sample_with_itself_and_gets_no_gradient():
    method = build("batch")
    b = batch([4, 4, 4])
    assert method.sample_negatives(b.y).tolist() == [4, 4, 4]
    loss = method.loss(b)["ebm"]
    torch.testing.assert_close(loss, torch.log(torch.tensor(2.0)))
    loss.backward()
    # analytically zero: the positive and negative energies are the same; a BLAS may leave
    # rounding residue of the two equal terms (torch 2.14 on CPU does)
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in method.model.parameters())


def test_predict_is_minus_the_energy_over_the_seen_classes():
    method = build()
    method.begin_task(SimpleNamespace(id=0))
    x = torch.randn(4, 1, 4, 4)
    logits = method.predict(x)
    torch.testing.assert_close(logits[:, :3], -method.model(x)[:, :3])
    assert torch.isneginf(logits[:, 3:]).all()


def replaying(**options):
    """An ebm replaying 4 samples a step that trained on task 0 and begins task 1."""
    method = build(memory=Reservoir(size=50), replay_batch_size=4, **options)
    method.begin_task(SimpleNamespace(id=0))
    for _ in range(3):
        method.observe(batch(torch.randint(0, 3, (8,))))
    method.begin_task(SimpleNamespace(id=1))
    return method


def test_replay_weighs_the_current_batch_one_over_t_and_the_replayed_the_rest(monkeypatch):
    method = replaying()
    drawn = spied_negatives(method, monkeypatch)
    terms = method.loss(batch(torch.randint(3, 6, (8,))))
    [(y, neg)] = drawn
    assert len(y) == 12 and (y[8:] < 3).all()  # 8 current, then 4 replayed of task 0
    # per-sample losses 0..11: current first, then replayed
    monkeypatch.setattr(method, "pair_nll", lambda x, y: torch.arange(12.0))
    terms = method.loss(batch(torch.randint(3, 6, (8,))))
    torch.testing.assert_close(terms["ebm"], torch.tensor(3.5 / 2))  # mean(0..7) / t, t = 2
    torch.testing.assert_close(terms["replay"], torch.tensor(9.5 * (1 - 1 / 2)))
    method.replay_weight = "mean"
    terms = method.loss(batch(torch.randint(3, 6, (8,))))
    assert list(terms) == ["ebm"]
    torch.testing.assert_close(terms["ebm"], torch.tensor(5.5))  # mean(0..11)


def test_replay_draws_task_negatives_from_every_class_seen(monkeypatch):
    method = replaying()
    drawn = spied_negatives(method, monkeypatch)
    for _ in range(20):
        method.observe(batch(torch.randint(3, 6, (8,))))
    negs = torch.cat([neg for _, neg in drawn])
    assert (negs != torch.cat([y for y, _ in drawn])).all()
    assert set(negs.tolist()) == set(range(6))


def test_replay_needs_a_memory_and_boundaries_for_its_task_weights():
    with pytest.raises(ValueError, match="memory=class_balanced"):
        build(replay_batch_size=4)
    method = build("batch", memory=Reservoir(size=50), replay_batch_size=4)
    with pytest.raises(ConfigError, match="replay_weight=mean"):
        method.check_stream({"task_free"}, "task_free")
    method.replay_weight = "mean"
    method.check_stream({"task_free"}, "task_free")


@needs_mnist
def test_task_free_needs_batch_negatives_and_an_energy_network(run_job):
    with pytest.raises(ConfigError, match="negatives=batch"):
        run_job("experiment=ebm_split_mnist", "stream=task_free", "budget.iters=1")
    with pytest.raises(InstantiationException, match="model=ebm_mlp"):
        run_job("experiment=ebm_split_mnist", "model=mlp", "budget.iters=1")


@needs_mnist
def test_ebm_beats_the_softmax_classifier_in_class_il(run_job):
    """The paper's protocol shortened to 200 iterations per task (the task-free,
    boundary-agnostic variant to 100)."""
    ebm, _ = run_job("experiment=ebm_split_mnist", "budget.iters=200", "eval.every=0")
    softmax, _ = run_job("experiment=three_scenarios_split", "method=finetune",
                         "optimizer.lr=0.0001", "budget.iters=200", "eval.every=0",
                         "benchmark.normalize=standard", "benchmark.shuffle_classes=false")
    agnostic, _ = run_job("experiment=ebm_split_mnist", "stream=task_free",
                          "method.negatives=batch", "model.layers=2", "budget.iters=100",
                          "eval.every=0")
    assert ebm["acc_class_il"] > softmax["acc_class_il"] + 0.3  # 0.61 vs 0.19 at seed 0
    assert agnostic["acc_class_il"] > softmax["acc_class_il"] + 0.2  # 0.52 at seed 0
