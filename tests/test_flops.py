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


# -- registry, attention, sparse layers, fallback, attach once --------------------------------

import copy  # noqa: E402

from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from cl_bench.budget import flops  # noqa: E402


def _train_step(counter_model, loss_fn, *, reference_backend=SDPBackend.MATH):
    """(ours, FlopCounterMode) for one forward+backward; the CPU flash kernel of
    scaled_dot_product_attention has no FLOP formula, so the reference runs the math one."""
    counter = FlopCounter().attach(counter_model)
    with sdpa_kernel(reference_backend), FlopCounterMode(display=False) as reference:
        loss_fn().backward()
    return counter, reference.get_total_flops()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_matches_flop_counter_mode(batch_first, need_weights):
    torch.manual_seed(0)
    embed = nn.Linear(8, 16)
    attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    model = nn.ModuleList([embed, attn])
    x = torch.randn((3, 5, 8) if batch_first else (5, 3, 8))

    def loss():
        h = embed(x)
        return attn(h, h, h, need_weights=need_weights)[0].sum()

    counter, reference = _train_step(model, loss)
    assert counter.train_flops == counter.train_flops_dense == reference
    # the lowest layer frozen: attention pays weight gradients and its matmuls' gradients only
    embed.requires_grad_(False)
    counter, reference = _train_step(model, loss)
    assert counter.train_flops == reference


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_layer_counts_attention_called_with_keywords(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                       batch_first=batch_first)
    x = torch.randn((2, 6, 16) if batch_first else (6, 2, 16), requires_grad=True)
    counter, reference = _train_step(layer, lambda: layer(x).sum())
    assert counter.train_flops == reference > 0


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (executed densely)."""

    def __init__(self, in_features, out_features, density):
        super().__init__(in_features, out_features)
        mask = torch.zeros(out_features * in_features)
        mask[: round(density * mask.numel())] = 1
        self.register_buffer("mask", mask[torch.randperm(mask.numel())].view_as(self.weight))

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


@flops.register_flops(MaskedLinear)
def _masked_linear_flops(module, inputs, output):
    dense = flops.linear_flops(module, inputs, output)
    return dense, round(dense * module.mask.mean().item())


class PlainSubclass(nn.Linear):
    pass


def test_subclass_resolves_to_nearest_registered_base():
    assert flops.flops_rule(PlainSubclass) is flops.flops_rule(nn.Linear)
    assert flops.flops_rule(MaskedLinear)[0] is _masked_linear_flops
    model = nn.Sequential(PlainSubclass(6, 5), nn.ReLU(), nn.Linear(5, 3))
    counter, reference = _train_step(model, lambda: model(torch.randn(4, 6)).sum())
    assert counter.train_flops == reference == 2 * 4 * (2 * 6 * 5 + 3 * 5 * 3)


def test_masked_layer_reports_dense_and_sparse_flops():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(20, 30, density=0.25), nn.ReLU(), nn.Linear(30, 10))
    x = torch.randn(4, 20)
    counter, reference = _train_step(model, lambda: F.cross_entropy(model(x), torch.arange(4)))
    masked, head = 2 * 4 * 20 * 30, 2 * 4 * 30 * 10
    # the masked (lowest) layer: forward + weight gradient; the head: forward + dW + dX
    assert counter.train_flops_dense == 2 * masked + 3 * head == reference
    assert counter.train_flops == 2 * masked // 4 + 3 * head
    with counter.evaluating(), torch.inference_mode():
        model(x)
    assert (counter.eval_flops_dense, counter.eval_flops) == (masked + head, masked // 4 + head)


class LowRank(nn.Module):
    """Unregistered leaf: two matmuls on its own parameters (`x @ U @ V`)."""

    def __init__(self, d_in, rank, d_out):
        super().__init__()
        self.u = nn.Parameter(torch.randn(d_in, rank))
        self.v = nn.Parameter(torch.randn(rank, d_out))

    def forward(self, x):
        return torch.matmul(torch.matmul(x, self.u), self.v)


class QuadraticForm(nn.Module):
    """Unregistered bilinear-like leaf: `x W x^T` per sample."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, d))

    def forward(self, x):
        return (torch.matmul(x, self.weight) * x).sum(-1, keepdim=True)


@pytest.mark.parametrize("below", [False, True])  # a trainable layer below: input gradients
def test_unknown_leaf_modules_are_counted_by_flop_counter_mode(below, monkeypatch):
    measured = []
    measure = flops.measure_flops
    monkeypatch.setattr(flops, "measure_flops", lambda *a: measured.append(a[0]) or measure(*a))
    model = nn.Sequential(nn.Linear(12, 12) if below else nn.Identity(), LowRank(12, 3, 8),
                          nn.ReLU(), QuadraticForm(8), nn.LayerNorm(1))
    counter = FlopCounter().attach(model)
    for _ in range(3):
        with FlopCounterMode(display=False) as reference:
            model(torch.randn(5, 12)).sum().backward()
        assert counter.train_flops == reference.get_total_flops()
        counter.train_flops = 0
    assert [type(m) for m in measured] == [LowRank, QuadraticForm]  # once per shape
    with counter.evaluating(), torch.inference_mode(), FlopCounterMode(display=False) as ref:
        model(torch.randn(7, 12))
    assert counter.eval_flops == ref.get_total_flops() > 0
    assert len(measured) == 4


def test_fallback_draws_no_random_numbers():
    class NoisyProjection(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return F.dropout(x @ self.weight, 0.5)

    model = NoisyProjection()
    torch.manual_seed(0)
    expected = model(torch.ones(2, 4))
    FlopCounter().attach(model)
    torch.manual_seed(0)
    assert torch.equal(model(torch.ones(2, 4)), expected)


def test_attach_is_idempotent_and_detach_removes_every_hook():
    model = MLP((1, 8, 8), 10, hidden=(16,))
    counter = FlopCounter().attach(model).attach(model).attach(model.head)
    teacher = copy.deepcopy(model, {id(counter): counter})  # the copy carries the hooks along
    counter.attach(teacher)
    with torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
        teacher(torch.randn(1, 1, 8, 8))
    assert counter.train_flops == 2 * 2 * (64 * 16 + 16 * 10)
    counter.detach()
    with torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
        teacher(torch.randn(1, 1, 8, 8))
    assert counter.train_flops == 2 * 2 * (64 * 16 + 16 * 10)


def test_component_columns_and_state_dict():
    model = MLP((1, 4, 4), 3, hidden=(8,))
    counter = FlopCounter().attach(model)
    assert counter.component_columns() == {}
    with counter.component("replay"):
        model(torch.randn(2, 1, 4, 4)).sum().backward()
    with counter.component("current"):
        model(torch.randn(1, 1, 4, 4)).sum().backward()
    columns = counter.component_columns()
    assert list(columns) == ["flops_replay", "flops_current"]
    assert columns["flops_replay"] == 2 * columns["flops_current"]
    assert sum(columns.values()) == counter.train_flops
    restored = FlopCounter()
    restored.load_state_dict(counter.state_dict())
    assert restored.state_dict() == counter.state_dict()
    assert restored.component_columns() == columns
