"""The sparsity engine: masked layers, ERK, static/SET/RigL/SparCL mask updates, gradient
masking, and the sparse-aware FLOP accounting of papers/methods_sparse.md section 10."""

import functools
import math

import pytest
import torch

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.base import NoMemory
from cl_bench.methods.finetune import Finetune
from cl_bench.models.masked import Masked, layer_densities, maskable
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import ReducedResNet18
from cl_bench.plugins.gradient_mask import GradientMask
from cl_bench.plugins.sparsity import Sparsity

MACS = 784 * 400 + 400 * 400 + 400 * 10  # MLP 784-400-400-10, forward MACs per sample


class Task:
    def __init__(self, id_):
        self.id = id_


def mlp_method(*plugins, steps=None, optimizer=torch.optim.SGD, **opt):
    torch.manual_seed(0)
    class_mask = torch.ones(1, 10, dtype=torch.bool)
    method = Finetune(model=MLP((1, 28, 28), 10), memory=NoMemory(),
                      optimizer=functools.partial(optimizer, lr=0.05, **opt),
                      preprocess=Preprocess((0.5,), (0.3,), "cpu"), class_mask=class_mask,
                      scenario="class_il", counter=FlopCounter(), plugins=plugins)
    method.task_steps = steps
    method.begin_task(Task(0))
    return method


def steps(method, n, batch=8, seed=0):
    """`n` training steps on random images; the training FLOPs each step logged."""
    gen = torch.Generator().manual_seed(seed)
    per_step = []
    for _ in range(n):
        x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        before = method.counter.train_flops
        method.observe(Batch(x, y, torch.zeros(batch, dtype=torch.long)))
        per_step.append(method.counter.train_flops - before)
    return per_step


def dense_step_flops(batch):
    # the first layer needs no input gradient: 2x its forward; the others 3x
    return 2 * batch * (2 * 784 * 400) + 3 * batch * 2 * (400 * 400 + 400 * 10)


def test_dense_training_is_three_forwards_per_sample_above_the_first_layer():
    method = mlp_method()
    assert steps(method, 2) == [dense_step_flops(8)] * 2
    assert method.counter.train_flops == method.counter.train_flops_dense


@pytest.mark.parametrize("update", ["static", "set"])
def test_static_and_set_log_density_times_dense(update):
    method = mlp_method(Sparsity(density=0.1, update=update, delta_t=5), steps=40)
    logged = steps(method, 40)
    assert all(f * 10 == dense_step_flops(8) for f in logged)  # exactly 3 d f per sample
    assert method.counter.train_flops_dense == 40 * dense_step_flops(8)


def test_rigl_at_90_percent_logs_0103_of_dense_per_step():
    rigl = Sparsity(density=0.1, update="rigl", delta_t=100, t_end=1.0)
    method = mlp_method(rigl, steps=1000)
    logged = steps(method, 200, batch=4)
    ratio = sum(logged) / (200 * dense_step_flops(4))
    assert ratio == pytest.approx(0.103, abs=0.002)
    # the two update steps (100th, 200th) pay the dense weight gradient
    assert logged[99] > logged[98] and logged[199] > logged[198] and len(set(logged)) == 2


@pytest.mark.parametrize("update", ["set", "rigl"])
def test_nonzeros_per_layer_never_change_and_dead_weights_stay_zero(update):
    sparsity = Sparsity(density=0.2, update=update, delta_t=3, drop_fraction=0.5, t_end=1.0)
    method = mlp_method(sparsity, steps=30, optimizer=torch.optim.Adam)
    start = sparsity.nonzeros()
    masks = {n: layer.mask.clone() for n, layer in sparsity.layers.items()}
    steps(method, 30)
    assert sparsity.nonzeros() == start == {
        n: int(layer.mask.sum()) for n, layer in sparsity.layers.items()}
    for name, layer in sparsity.layers.items():
        assert not layer.weight[layer.mask == 0].any()
        assert (layer.mask != masks[name]).any()  # the topology did move


def test_rigl_grows_the_largest_gradients_with_zero_weight_and_fresh_state():
    sparsity = Sparsity(density=0.1, update="rigl", delta_t=2, drop_fraction=0.3, t_end=1.0)
    method = mlp_method(sparsity, steps=100, optimizer=torch.optim.SGD, momentum=0.9)
    layer = sparsity.layers["head"]
    steps(method, 1)
    old = layer.mask.bool()
    grads = {}
    original = sparsity._update_masks

    def spy():
        grads.update({k: v.clone() for k, v in sparsity._grads.items()})
        original()

    sparsity._update_masks = spy
    steps(method, 1, seed=1)  # the update step
    born = layer.mask.bool() & ~old
    assert born.any()
    assert not layer.weight[born].any()
    assert not method.optimizer.state[layer.weight]["momentum_buffer"][born].any()
    # every grown position has a larger dense gradient than any dead position not grown
    g = grads["head"].abs()
    assert g[born].min() >= g[layer.mask == 0].max()


def test_drop_fraction_follows_the_cosine_schedule():
    sparsity = Sparsity(density=0.1, update="rigl", drop_fraction=0.3, t_end=0.75)
    mlp_method(sparsity, steps=400)
    assert sparsity.drop_fraction_at(0) == pytest.approx(0.3)
    assert sparsity.drop_fraction_at(150) == pytest.approx(0.15)
    assert sparsity.drop_fraction_at(301) == 0.0


def test_erk_total_nonzeros_and_no_layer_above_one():
    model = ReducedResNet18((3, 32, 32), 100)
    shapes = [tuple(m.weight.shape) for m in maskable(model).values()]
    sizes = [math.prod(s) for s in shapes]
    for density in (0.05, 0.1, 0.2, 0.5):
        d = layer_densities(shapes, density, "erk")
        assert max(d) <= 1
        nnz = sum(round(di * n) for di, n in zip(d, sizes, strict=True))
        assert abs(nnz - density * sum(sizes)) <= len(shapes)
    d = layer_densities(shapes, 0.5, "erk")
    assert d[0] == 1.0  # the 3-channel stem is made dense
    sparsity = Sparsity(density=0.1, distribution="erk")
    sparsity.wrap_model(model)
    assert abs(sum(sparsity.nonzeros().values()) - 0.1 * sum(sizes)) <= len(shapes)


def test_dense_layers_are_left_alone_and_a_model_without_layers_errors():
    sparsity = Sparsity(density=0.5, dense_layers=["head"])
    model = sparsity.wrap_model(MLP((1, 4, 4), 3, hidden=[5]))
    assert isinstance(model.features[1], Masked) and not isinstance(model.head, Masked)
    with pytest.raises(ValueError, match="dense_layers"):
        Sparsity(dense_layers=["*"]).wrap_model(MLP((1, 4, 4), 3, hidden=[5]))
    with pytest.raises(ValueError, match="plugins.sparsity.update"):
        Sparsity(update="magic")


def test_sparcl_task_aware_masking_swings_density_by_grow_delta():
    sparsity = Sparsity(density=0.25, update="sparcl", delta_t=10, grow_delta=0.05,
                        phases=[0.1, 0.9])
    method = mlp_method(sparsity, steps=100)
    n = sparsity.layers["head"].weight.numel()
    steps(method, 1)  # step 0 updates: grow phase, density d + delta
    assert sparsity.nonzeros()["head"] == round(0.30 * n)
    steps(method, 10)  # step 10 (10% of the task): prune to d - delta, regrow to d
    assert sparsity.nonzeros()["head"] == round(0.25 * n)
    steps(method, 89)
    assert sparsity.nonzeros()["head"] == round(0.25 * n)


def test_task_fractions_need_planned_steps():
    method = mlp_method(Sparsity(update="sparcl", delta_frac=0.1), steps=None)
    with pytest.raises(ValueError, match="plugins.sparsity.delta_frac.*budget.match"):
        steps(method, 1)


def test_gradient_mask_applies_keep_of_the_live_gradients_and_counts_them():
    sparsity = Sparsity(density=0.5)
    method = mlp_method(sparsity, GradientMask(keep=0.5, refresh=3), steps=10)
    layer = sparsity.layers["features.3"]
    before = layer.weight.detach().clone()
    logged = steps(method, 1)
    changed = (layer.weight != before).sum().item()
    assert changed <= round(0.5 * layer.nnz) and changed > 0.4 * layer.nnz
    # forward and input gradients at density 1/2, weight gradients at 1/4 of the entries
    f1, f2 = 2 * 8 * 784 * 400, 2 * 8 * (400 * 400 + 400 * 10)
    assert logged == [f1 // 2 + f1 // 4 + 2 * f2 // 2 + f2 // 4]


def test_masks_survive_a_checkpoint():
    sparsity = Sparsity(density=0.3, update="set", delta_t=2)
    method = mlp_method(sparsity, steps=10)
    steps(method, 5)
    state = method.state_dict()
    other = Sparsity(density=0.3, update="set", delta_t=2)
    fresh = mlp_method(other, steps=10)
    fresh.load_state_dict(state)
    for name, layer in sparsity.layers.items():
        assert torch.equal(other.layers[name].mask, layer.mask)
        assert other.layers[name].nnz == layer.nnz
    assert other.step == 5


def test_rigl_er_by_config_reports_per_task_flops_both_ways(run_job):
    summary, run_dir = run_job(
        "benchmark=split_mnist", "method=er", "plugin=[sparsity]", "plugins.sparsity.update=rigl",
        "plugins.sparsity.delta_t=10", "budget.epochs=null", "budget.iters=30", "eval.every=0")
    assert summary["status"] == "completed"
    assert sum(summary["train_flops_per_task"]) == summary["train_flops"]
    assert sum(summary["train_flops_dense_per_task"]) == summary["train_flops_dense"]
    ratio = summary["train_flops"] / summary["train_flops_dense"]
    # 2 update steps of 30 per task, every layer at density 0.1 (RigL's formula, MLP 2x400)
    assert 0.1 < ratio < 0.16
    assert summary["sparsity_density"] == pytest.approx(0.1, abs=1e-4)
    assert summary["overhead_flops_mask_update"] > 0


def test_sparcl_preset_runs_by_config_at_its_density(run_job):
    summary, _ = run_job("experiment=seq_mnist_derpp", "method=sparcl", "budget.epochs=null",
                         "budget.iters=40", "eval.every=0")
    assert summary["status"] == "completed"
    # TDM ends each task's last phase at the target density; the head stays dense
    assert summary["sparsity_density"] == pytest.approx(0.1, abs=2e-3)
    assert summary["train_flops"] < summary["train_flops_dense"] / 5
    assert summary["data_removed"] > 0
