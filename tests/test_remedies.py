"""Stability-gap remedies: each switch's invariant on a tiny model, and NMC on a real run."""

import functools

import pytest
import torch
import torch.nn.functional as F

from cl_bench.data.transforms import Preprocess
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.er import ER
from cl_bench.models.mlp import MLP
from cl_bench.plugins.stability_gap import (
    ClassMeanInit,
    FreezeOldRows,
    LoRA,
    LoRALinear,
    NMCHead,
    SoftTargets,
)
from conftest import batch_of, interrupt_and_resume, tiny_stream, train_task


def make_er(head="linear", plugins=()):
    torch.manual_seed(0)
    stream = tiny_stream()
    model = MLP((1, 4, 4), 4, hidden=[8, 8], head=head)
    plugins = [*plugins, *([NMCHead(500)] if head == "nmc" else [])]
    method = ER(model=model, optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                memory=Reservoir(20), preprocess=Preprocess((0.5,), (0.3,), "cpu"),
                class_mask=stream.class_mask(), scenario="class_il", plugins=plugins)
    return method, stream


def test_frozen_old_rows_do_not_move_even_with_momentum():
    method, stream = make_er(plugins=[FreezeOldRows()])
    train_task(method, stream.tasks[0])
    head = method.model.head
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    train_task(method, stream.tasks[1])
    assert torch.equal(head.weight[:2], w[:2]) and torch.equal(head.bias[:2], b[:2])
    assert not torch.equal(head.weight[2:], w[2:])
    # without the switch the same steps move the old rows
    plain, _ = make_er()
    train_task(plain, stream.tasks[0])
    w0 = plain.model.head.weight.detach().clone()
    train_task(plain, stream.tasks[1])
    assert not torch.equal(plain.model.head.weight[:2], w0[:2])


def test_class_mean_init_sets_new_rows_from_centred_features():
    method, stream = make_er(plugins=[ClassMeanInit()])
    train_task(method, stream.tasks[0])
    head, task = method.model.head, stream.tasks[1]
    old_norm = head.weight[:2].detach().norm(dim=1).mean()
    old_bias = head.bias[:2].mean()
    method.begin_task(task)
    with torch.no_grad():
        feats = method.model.features(method.preprocess(task.train_x))
    for c in (2, 3):
        direction = feats[task.train_y == c].mean(0) - feats.mean(0)
        assert torch.allclose(head.weight[c].detach(), old_norm * F.normalize(direction, dim=0),
                              atol=1e-6)
        assert head.bias[c].item() == pytest.approx(old_bias.item())


def test_dynamic_soft_targets_mix_one_hot_and_own_prediction():
    method, stream = make_er(plugins=[SoftTargets(weight=0.25)])
    method.begin_task(stream.tasks[0])  # seen classes: 0, 1
    logits = torch.tensor([[2.0, 0.5, 3.0, -1.0]], requires_grad=True)
    own = F.softmax(torch.tensor([2.0, 0.5]), 0)
    target = torch.cat([0.75 * torch.tensor([0.0, 1.0]) + 0.25 * own, torch.zeros(2)])
    expected = -(target * F.log_softmax(logits.detach(), 1)).sum()
    loss = method.cross_entropy(logits, torch.tensor([1]), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_lora_trains_base_first_then_a_merged_low_rank_update():
    method, stream = make_er(plugins=[LoRA(rank=2)])
    layers = [m for m in method.model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 2  # both hidden layers, not the head
    first = layers[0].base.weight.detach().clone()
    train_task(method, stream.tasks[0])
    assert not torch.equal(layers[0].base.weight, first)  # task 0 trains the base itself
    assert not layers[0].base.weight.requires_grad
    frozen = layers[0].base.weight.detach().clone()
    method.begin_task(stream.tasks[1])
    for s in range(5):
        method.observe(batch_of(stream.tasks[1], s))
    assert torch.equal(layers[0].base.weight, frozen)  # only the update trained
    x = method.preprocess(stream.tasks[1].test_x)
    with torch.no_grad():
        before = method.model(x)
        method.end_task(stream.tasks[1])  # merge
        assert torch.allclose(method.model(x), before, atol=1e-5)
    assert torch.count_nonzero(layers[0].up.weight) == 0


def test_nmc_predicts_the_nearest_class_mean():
    method, stream = make_er(head="nmc")
    train_task(method, stream.tasks[0])
    train_task(method, stream.tasks[1], steps=2)
    x = method.preprocess(stream.tasks[0].test_x[:7])
    bank = method.plugins[-1].bank
    bank_x = torch.cat([bank[0], method.memory.stored().x])
    bank_y = torch.cat([bank[1], method.memory.stored().y])
    with torch.no_grad():
        logits = method.predict(x)
        f = F.normalize(method.model.features(x), dim=1)
        b = F.normalize(method.model.features(method.preprocess(bank_x)), dim=1)
    for c in range(4):
        mean = F.normalize(b[bank_y == c].mean(0), dim=0)
        assert torch.allclose(logits[:, c], f @ mean, atol=1e-5)


def test_bad_switch_values_are_named():
    with pytest.raises(ValueError, match="plugins.lora.rank=0"):
        make_er(plugins=[LoRA(rank=0)])
    with pytest.raises(ValueError, match="model.head='knn'"):
        make_er(head="knn")


def test_nmc_head_narrows_the_gap_of_er(run_job):
    er, _ = run_job("method=er", "eval.every=5", "eval.plot=false")
    nmc, _ = run_job("method=er", "model.head=nmc", "eval.every=5", "eval.plot=false")
    assert nmc["min_acc_class_il"] > er["min_acc_class_il"] + 0.1
    assert nmc["gap_depth_class_il"] < er["gap_depth_class_il"]
    assert nmc["acc_class_il"] > er["acc_class_il"] - 0.02
    assert nmc["train_flops"] == er["train_flops"]  # the same training; only prediction differs


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
def test_interrupted_sgm_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    # LoRA is active from task 1 on and old rows freeze: both must survive the restart
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, ER, ["method=sgm", "budget.epochs=null", "budget.iters=20",
                                    "eval.every=5", "eval.plot=false"], stop_at=45)
    assert summary["resumed_after_task"] == 1
    assert summary["min_acc_class_il"] == ref["min_acc_class_il"]
