"""Per-task supermask methods (SupSup, ExSSNeT, WSN, SoftNet): zero forgetting with task ids,
the non-exclusive control, one-shot task inference, KKT, bit-packed masks, FLOP rules."""

import functools

import pytest
import torch
from torch import nn

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.batch import Batch
from cl_bench.data.benchmarks import permuted_stream, split_stream
from cl_bench.data.stream import Task
from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.memory.base import NoMemory
from cl_bench.methods.exssnet import ExSSNeT
from cl_bench.methods.supsup import SupSup
from cl_bench.methods.wsn import WSN, SoftNet
from cl_bench.models.masked import pack_bits, unpack_bits
from cl_bench.models.mlp import MLP
from conftest import data_root, interrupt_and_resume, needs_mnist

METHODS = {"supsup": SupSup, "exssnet": ExSSNeT, "wsn": WSN, "softnet": SoftNet}


@pytest.fixture(scope="module")
def split_mnist():
    return split_stream(name="split_mnist", dataset="mnist", n_tasks=5, root=data_root())


def make(name, n_tasks=5, n_classes=10, hidden=(100, 100), lr=0.01, scenario="task_il",
         class_mask=None, **kw):
    torch.manual_seed(0)
    if class_mask is None:
        class_mask = torch.zeros(n_tasks, n_classes, dtype=torch.bool)
        per = n_classes // n_tasks
        for t in range(n_tasks):
            class_mask[t, t * per:(t + 1) * per] = True
    return METHODS[name](model=MLP((1, 28, 28), n_classes, hidden=hidden), memory=NoMemory(),
                         optimizer=functools.partial(torch.optim.Adam, lr=lr),
                         preprocess=Preprocess((0.1307,), (0.3081,), "cpu"),
                         class_mask=class_mask, scenario=scenario, counter=FlopCounter(), **kw)


def train(method, task, steps=60, batch=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    method.begin_task(task)
    method.task_steps = steps
    for _ in range(steps):
        idx = torch.randint(0, len(task.train_y), (batch,), generator=gen)
        method.observe(Batch(task.train_x[idx], task.train_y[idx],
                             torch.full((batch,), task.id)))
    method.end_task(task)


def task_logits(method, task, n=500):
    method.model.eval()
    with torch.inference_mode():
        x = method.preprocess(task.test_x[:n])
        out = method.predict(x, torch.full((len(x),), task.id))
    method.model.train()
    return out


def task_acc(method, task, n=500):
    logits = task_logits(method, task, n).masked_fill(~method.class_mask[task.id],
                                                      float("-inf"))
    return float((logits.argmax(1) == task.test_y[:n]).float().mean())


@needs_mnist
@pytest.mark.parametrize("name", ["supsup", "exssnet", "wsn"])
def test_old_task_logits_are_bitwise_identical_after_later_tasks(name, split_mnist):
    method = make(name)
    tasks = split_mnist.tasks[:3]
    train(method, tasks[0])
    before = task_logits(method, tasks[0])
    for task in tasks[1:]:
        train(method, task)
    assert torch.equal(task_logits(method, tasks[0]), before)
    assert task_acc(method, tasks[0]) > 0.9  # learned, not trivially constant
    if name != "supsup":  # the shared weights did train
        assert len(method.learned) == 3


@needs_mnist
def test_exssnet_without_exclusivity_forgets_and_with_it_does_not(run_job):
    common = ("benchmark=split_mnist", "scenario=task_il", "optimizer=adam", "optimizer.lr=0.01",
              "budget.epochs=null", "budget.iters=60", "budget.batch_size=64", "eval.every=0",
              "model.hidden=[100,100]")
    control, _ = run_job("method=exssnet", "method.exclusive=false", *common)
    exclusive, _ = run_job("method=exssnet", *common)
    assert control["forgetting_task_il"] > 0  # measured 0.0018 (binary tasks are easy)
    assert exclusive["forgetting_task_il"] == 0
    # the exclusive weights shrink as the masks fill the network; SSNeT's do not
    assert exclusive["train_flops"] < control["train_flops"]


@needs_mnist
def test_softnet_masks_are_soft_and_it_learns(split_mnist):
    method = make("softnet", soft=0.1)
    for task in split_mnist.tasks[:2]:
        train(method, task)
    layer = method.layers[0]
    mask = layer._soften(layer.stored_mask(0))
    assert ((mask > 0) & (mask < 1)).any() and mask.max() == 1 and mask.min() >= 0
    assert task_acc(method, split_mnist.tasks[1]) > 0.9


@needs_mnist
@pytest.mark.slow
def test_supsup_one_shot_task_inference_on_permuted_mnist():
    """10 tasks, MLP 2x400 without BatchNorm, density 0.1, 100 steps of 128 per task:
    task-id accuracy of chunks of 64 test samples (measured 1.000)."""
    stream = permuted_stream(name="pmnist", dataset="mnist", n_tasks=10, root=data_root())
    method = make("supsup", n_tasks=10, hidden=(400, 400), scenario="domain_il",
                  class_mask=torch.ones(10, 10, dtype=torch.bool), infer_task=True)
    for task in stream.tasks:
        train(method, task, steps=100, batch=128)
    method.model.eval()
    hits = total = 0
    with torch.inference_mode():
        for task in stream.tasks:
            ids = method.infer_tasks(method.preprocess(task.test_x[:1024]))
            hits += int((ids == task.id).sum())
            total += len(ids)
    assert hits / total >= 0.95


@needs_mnist
def test_task_inference_is_scored_in_the_summary(run_job):
    summary, _ = run_job("benchmark=permuted_mnist", "benchmark.n_tasks=3", "method=supsup",
                         "method.infer_task=true", "optimizer=adam", "optimizer.lr=0.01",
                         "budget.epochs=null", "budget.iters=50", "budget.batch_size=128",
                         "eval.every=0", "model.hidden=[100,100]")
    assert summary["task_infer_acc"] > 0.95
    assert summary["acc_domain_il"] > 0.7  # the inferred masks' predictions


@needs_mnist
def test_kkt_picks_the_earlier_copy_of_a_repeated_task(split_mnist):
    a, b = split_mnist.tasks[:2]
    repeat = Task(2, a.classes, a.train_x, a.train_y, a.test_x, a.test_y)
    class_mask = torch.zeros(3, 10, dtype=torch.bool)
    class_mask[0, a.classes] = class_mask[2, a.classes] = class_mask[1, b.classes] = True
    method = make("exssnet", n_tasks=3, class_mask=class_mask, knn_samples=600, knn_k=20)
    for task in (a, b, repeat):
        train(method, task)
    assert method.kkt_choice[2] == 0
    acc_first, acc_second = method.kkt_acc[1]
    assert acc_first > acc_second
    # KKT's k-NN is an overhead, not training FLOPs
    assert method.counter.overhead["kkt"] > 0


def test_bits_pack_eight_weights_per_byte_and_round_trip():
    mask = torch.rand(7, 13) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (7 * 13 + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1])).tolist() == [129, 128]


def test_masks_keep_exactly_the_density_and_report_bytes_and_capacity():
    method = make("supsup", density=0.25)
    task = Task(0, [0, 1], torch.zeros(64, 1, 28, 28, dtype=torch.uint8),
                torch.zeros(64, dtype=torch.long), None, None)
    train(method, task, steps=3)
    sizes = [784 * 100, 100 * 100, 100 * 10]
    for layer, n in zip(method.layers, sizes, strict=True):
        assert int(layer.stored_mask(0).sum()) == int(0.25 * n)
    summary = method.summary()
    assert summary["mask_bytes"] == sum((n + 7) // 8 for n in sizes)
    assert summary["capacity_used"] == pytest.approx(sum(int(0.25 * n) for n in sizes)
                                                     / sum(sizes))


def test_supermask_flops_theoretical_vs_executed():
    """Section 10: mask learning costs (2d + 1) F per layer above the first (d F forward,
    d F input gradient, a dense F score gradient), the first layer (d + 1) F; PyTorch
    executes 3 F (2 F)."""
    d, batch = 0.1, 8
    method = make("supsup", density=d)
    method.begin_task(Task(0, [0, 1], None, None, None, None))
    method.task_steps = 10
    x = torch.zeros(batch, 1, 28, 28, dtype=torch.uint8)
    method.observe(Batch(x, torch.zeros(batch, dtype=torch.long), torch.zeros(batch).long()))
    f1, rest = 2 * batch * 784 * 100, 2 * batch * (100 * 100 + 100 * 10)
    c = method.counter
    assert c.train_flops_dense == 2 * f1 + 3 * rest
    assert c.train_flops == pytest.approx((d + 1) * f1 + (2 * d + 1) * rest, rel=1e-6)


def test_exssnet_weight_phase_counts_only_the_exclusive_weight_gradients():
    d, batch = 0.1, 8
    method = make("exssnet", density=d, kkt=False, mask_fraction=0.5)
    x = torch.randint(0, 255, (batch, 1, 28, 28), dtype=torch.uint8)
    data = Batch(x, torch.zeros(batch, dtype=torch.long), torch.zeros(batch).long())
    method.begin_task(Task(0, [0, 1], None, None, None, None))
    method.task_steps = 2
    method.observe(data)  # mask phase; its after_step starts the weight phase
    assert method.mask_fixed
    weights = [m.weight.detach().clone() for m in method.layers]
    before = method.counter.train_flops
    method.observe(data)
    f = [2 * batch * n for n in (784 * 100, 100 * 100, 100 * 10)]
    # first task: every weight of the mask is exclusive (grad_frac = d); no input gradient
    # below the first layer
    expected = (d + d) * f[0] + sum((2 * d + d) * fl for fl in f[1:])
    assert method.counter.train_flops - before == pytest.approx(expected, rel=1e-6)
    for m, w in zip(method.layers, weights, strict=True):  # only masked weights moved
        moved = m.weight.detach() != w
        assert not (moved & ~m.stored_mask(0).bool()).any()


def test_bad_configs_raise_naming_the_key():
    with pytest.raises(ConfigError, match="method.density"):
        make("supsup", density=0.0)
    with pytest.raises(ConfigError, match="method.soft"):
        make("softnet", soft=0.0)
    with pytest.raises(ConfigError, match="BatchNorm"):
        SupSup(model=nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4)),
               memory=NoMemory(), optimizer=torch.optim.Adam,
               preprocess=Preprocess((0.5,), (0.3,), "cpu"),
               class_mask=torch.ones(1, 4, dtype=torch.bool), scenario="task_il")


@needs_mnist
@pytest.mark.parametrize("name", ["supsup", "exssnet"])
def test_packed_masks_round_trip_through_a_checkpoint(name, tmp_path, monkeypatch):
    resumed, ref = interrupt_and_resume(
        tmp_path, monkeypatch, METHODS[name],
        ["benchmark=split_mnist", "benchmark.n_tasks=5", "scenario=task_il", f"method={name}",
         "optimizer=adam", "optimizer.lr=0.01", "budget.epochs=null", "budget.iters=20",
         "budget.batch_size=32", "eval.every=0", "model.hidden=[50,50]"], stop_at=50)
    for key in ("mask_bytes", "capacity_used", "capacity_per_task", "acc_task_il"):
        assert resumed[key] == ref[key]
