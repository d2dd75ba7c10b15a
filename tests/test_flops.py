import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cl_bench.budget.budget import Budget
from cl_bench.budget.flops import FlopCounter
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import ReducedResNet18


def _step_flops(model, x, y):
    counter = FlopCounter().attach(model)
    with FlopCounterMode(display=False) as reference:
        F.cross_entropy(model(x), y).backward()
    return counter.train_flops, reference.get_total_flops()


def test_mlp_training_step_hand_computed():
    model = MLP((1, 28, 28), 10, hidden=(400, 400))
    ours, reference = _step_flops(model, torch.randn(1, 1, 28, 28), torch.tensor([3]))
    forward = 2 * (784 * 400 + 400 * 400 + 400 * 10)
    # backward: weight grads of all layers, input grads of all but the first
    backward = 2 * (784 * 400 + 400 * 400 + 400 * 10) + 2 * (400 * 400 + 400 * 10)
    assert ours == forward + backward == 2_238_400
    assert ours == pytest.approx(reference, rel=0.01)


def test_resnet_training_step_matches_flop_counter_mode():
    model = ReducedResNet18((3, 32, 32), 10)
    ours, reference = _step_flops(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert ours == pytest.approx(reference, rel=0.01)


def test_frozen_extractor_pays_no_backward_below_trainable_layers():
    model = ReducedResNet18((3, 32, 32), 10)
    for p in model.parameters():
        p.requires_grad_(False)
    model.head.weight.requires_grad_(True)
    ours, reference = _step_flops(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    forward = FlopCounter().attach(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert ours == pytest.approx(reference, rel=0.01)
    assert ours == forward.train_flops + 2 * 160 * 10 * 2  # + weight grad of the head only


def test_eval_flops_are_counted_apart():
    model = MLP((1, 8, 8), 10, hidden=(16,))
    counter = FlopCounter().attach(model)
    with counter.evaluating(), torch.inference_mode():
        model(torch.randn(5, 1, 8, 8))
    assert counter.train_flops == 0
    assert counter.eval_flops == 5 * 2 * (64 * 16 + 16 * 10)


def test_budget_epochs_iters_and_flop_cap():
    gen = torch.Generator().manual_seed(0)
    budget = Budget(batch_size=10, epochs=2)
    batches = list(budget.batches(95, gen))
    assert len(batches) == budget.steps_per_task(95) == 20
    first_epoch = torch.cat(batches[:10])
    assert sorted(first_epoch.tolist()) == list(range(95))  # each sample once per epoch
    assert len(list(Budget(batch_size=10, epochs=5, iters=7).batches(95, gen))) == 7

    capped = Budget(batch_size=4, epochs=None, iters=1000, flops_per_task=1000)
    model = MLP((1, 2, 2), 2, hidden=())
    capped.counter.attach(model)
    steps = 0
    for _ in capped.batches(100, gen):
        model(torch.randn(4, 1, 2, 2)).sum().backward()
        steps += 1
    per_step = 2 * 4 * 4 * 2 * 2  # forward + weight grad (input needs no grad)
    assert steps == -(-1000 // per_step)  # stops at the first step that reaches the cap


def test_budget_requires_a_limit():
    with pytest.raises(ValueError, match="budget.epochs or budget.iters"):
        Budget(epochs=None, iters=None)
