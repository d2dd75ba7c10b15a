"""The active training set and the plugins that shrink it or freeze layers: SparCL's
dynamic data removal, SpFDE's data sieving and layer freezing; steps and FLOPs against
hand-computed values, removal order against the forgetting counts, checkpoint round trips."""

import functools
import itertools
from types import SimpleNamespace

import pytest
import torch

import cl_bench.build as build
from cl_bench.budget.budget import Budget
from cl_bench.budget.flops import FlopCounter
from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.base import NoMemory
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.er import ER
from cl_bench.methods.finetune import Finetune
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import ReducedResNet18
from cl_bench.plugins.data_removal import DataRemoval
from cl_bench.plugins.forgetting import NEVER_CORRECT, ForgettingEvents
from cl_bench.plugins.freeze import Freeze, blocks
from cl_bench.plugins.sieve import Sieve
from conftest import compose_config, interrupt_and_resume, tiny_stream


def old_batches(budget, n_samples, generator):
    """`Budget.batches` before the active set existed, the reference for bit-identity."""
    total = budget.steps_per_task(n_samples)
    step = 0
    while step < total:
        order = torch.randperm(n_samples, generator=generator)
        for begin in range(0, n_samples, budget.batch_size):
            idx = order[begin : begin + budget.batch_size]
            if budget.drop_last and len(idx) < budget.batch_size:
                break
            if step >= total:
                return
            yield idx
            step += 1


@pytest.mark.parametrize("batch_size,epochs,iters,drop_last", [
    (10, 1, None, False), (7, 3, None, False), (7, 3, None, True), (8, None, 25, False),
    (8, 4, 9, True), (16, 2, 100, False), (64, 2, None, True)])
def test_budget_without_an_active_set_yields_the_old_batches(batch_size, epochs, iters,
                                                             drop_last):
    budget = Budget(batch_size=batch_size, epochs=epochs, iters=iters, drop_last=drop_last)
    for active in (None, lambda n: None):
        gen_old, gen_new = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        old = list(old_batches(budget, 50, gen_old))
        new = list(budget.batches(50, gen_new, "cpu", active=active, version=lambda: 0))
        assert len(new) == len(old)
        assert all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
        assert torch.equal(gen_old.get_state(), gen_new.get_state())  # same draws


def test_budget_epochs_pass_over_the_active_set_and_follow_its_changes():
    mask, version = torch.ones(40, dtype=torch.bool), [0]
    mask[:10] = False
    budget = Budget(batch_size=6, epochs=2)
    seen = []
    for step, idx in enumerate(budget.batches(40, torch.Generator().manual_seed(0), "cpu",
                                               active=lambda n: mask,
                                               version=lambda: version[0])):
        assert mask[idx].all()
        seen.append(idx)
        if step == 1:  # mid-epoch: 12 of the 30 presented, drop 10 others
            later = torch.cat(seen).tolist()
            drop = [i for i in range(10, 40) if i not in later][:10]
            mask[drop] = False
            version[0] += 1
    # epoch 1: 12 presented, then the 8 of the other 18 still active; epoch 2: the 20
    assert [len(i) for i in seen] == [6, 6, 6, 2, 6, 6, 6, 2]
    first = torch.cat(seen[:4]).tolist()
    assert len(set(first)) == 20 and set(first[12:]) <= set(mask.nonzero().squeeze(1).tolist())
    assert sorted(torch.cat(seen[4:]).tolist()) == mask.nonzero().squeeze(1).tolist()
    budget = Budget(batch_size=6, epochs=None, iters=7)
    assert len(list(budget.batches(40, torch.Generator(), "cpu", active=lambda n: mask))) == 7
    empty = torch.zeros(40, dtype=torch.bool)
    assert list(budget.batches(40, torch.Generator(), "cpu", active=lambda n: empty)) == []


def test_batch_carries_sample_positions_but_a_joined_batch_does_not():
    b = Batch(torch.zeros(4, 1), torch.arange(4), torch.zeros(4), sample=torch.arange(10, 14))
    assert b[torch.tensor([1, 3])].sample.tolist() == [11, 13]
    assert b.to("cpu").sample.tolist() == [10, 11, 12, 13]
    assert b.cat(b).sample is None


def test_forgetting_events_count_correct_to_incorrect_and_rank_never_correct_last():
    method = SimpleNamespace(scenario="class_il", seen_mask=torch.tensor([True, True, False]),
                             logits=None)
    method.batch_logits = lambda batch: method.logits
    stats = ForgettingEvents(4, "cpu")
    batch = Batch(torch.zeros(3, 1), torch.tensor([0, 1, 1]), torch.zeros(3, dtype=torch.long),
                  sample=torch.tensor([0, 1, 2]))
    right, wrong = [5.0, 0.0, 9.0], [0.0, 5.0, 9.0]  # class 2 is unseen: ignored
    for first in (True, False, True, False):
        method.logits = torch.tensor([right if first else wrong, [0.0, 5.0, 0.0],
                                      [5.0, 0.0, 0.0]])
        stats.record(method, batch)
    assert stats.counts().tolist() == [2, 0, NEVER_CORRECT, NEVER_CORRECT]
    assert stats.easiest(torch.tensor([0, 1, 2, 3]), 2).tolist() == [1, 0]
    assert stats.easiest(torch.tensor([2, 3]), 1).tolist() == [2]  # tie: lower position
    stats.reset()
    assert stats.counts().eq(NEVER_CORRECT).all()


def make(plugins, scenario="class_il", hidden=(8,), method_cls=Finetune, memory=None, **opt):
    stream = tiny_stream()
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.n_classes, hidden=list(hidden))
    return method_cls(model=model, optimizer=functools.partial(torch.optim.SGD, lr=0.1, **opt),
                      memory=NoMemory() if memory is None else memory,
                      preprocess=Preprocess(stream.mean, stream.std, "cpu"),
                      class_mask=stream.class_mask(), scenario=scenario, plugins=plugins,
                      counter=FlopCounter()), stream


def run_task(method, task, budget, seed=0, each_step=None):
    """One task through the runner's calls (as `Run._train_task`); returns the steps."""
    method.begin_task(task)
    data = method.train_data(task)
    method.task_steps = budget.steps_per_task(len(data))
    steps = 0
    for idx in budget.batches(len(data), torch.Generator().manual_seed(seed), "cpu",
                              active=method.active_samples, version=method.active_version):
        mask = method.active_samples(len(data))
        assert mask is None or mask[idx].all()
        batch = data[idx]
        batch.sample = idx
        method.observe(batch)
        steps += 1
        if each_step:
            each_step(method)
    method.end_task(task)
    return steps


def test_batch_logits_are_the_first_forward_of_the_step_and_live_until_after_step():
    seen = []

    class Spy(DataRemoval):
        def after_step(self, batch):
            seen.append(self.method.batch_logits(batch))

    method, stream = make([Spy()], method_cls=ER, memory=Reservoir(20))
    task = stream.tasks[0]
    method.begin_task(task)
    for s in range(2):  # the second step replays: its forward is batch.cat(replayed)
        batch = Batch(task.train_x[s * 4:s * 4 + 4], task.train_y[s * 4:s * 4 + 4],
                      torch.zeros(4, dtype=torch.long))
        with torch.no_grad():
            expected = method.model(method.preprocess(batch.x, train=True))
        method.observe(batch)
        assert torch.allclose(seen[-1], expected) and not seen[-1].requires_grad
        assert method.batch_logits(batch) is None  # freed at the end of the step
    assert len(method.memory) == 8


def test_data_removal_removes_the_least_forgotten_per_stage(monkeypatch):
    removals = []
    original = DataRemoval._remove

    def spy(self):
        counts, before = self.stats.counts().clone(), self.mask.clone()
        original(self)
        removals.append((counts, before, self.mask.clone()))

    monkeypatch.setattr(DataRemoval, "_remove", spy)
    plugin = DataRemoval(remove_frac=0.3, stages=[0.1, 0.2, 0.3, 0.4])
    method, stream = make([plugin])
    budget = Budget(batch_size=10, epochs=10)
    for task in stream.tasks:
        run_task(method, task, budget)
    n = len(stream.tasks[0].train_y)
    per_stage = round(0.3 * n / 4)
    assert len(removals) == 8 and plugin.removed == {0: 4 * per_stage, 1: 4 * per_stage}
    assert plugin.summary() == {"data_removed": 8 * per_stage}
    for counts, before, after in removals:
        removed, kept = before & ~after, after
        assert removed.sum() == per_stage and not (after & ~before).any()
        assert counts[removed].max() <= counts[kept].min()
    assert removals[0][0].lt(NEVER_CORRECT).any()  # the counts were recorded
    assert removals[4][1].all()  # task 1 starts with every sample
    state = plugin.state_dict()
    fresh = DataRemoval()
    fresh.load_state_dict(state)
    assert fresh.summary() == plugin.summary()


def test_data_removal_shortens_an_epoch_budget_as_planned(monkeypatch, run_job):
    # 60 samples, batches of 10, 5 epochs: 30 planned steps; 10 samples leave after step 6
    # (end of epoch 1) and 10 after step round(0.37 * 30) = 11 (end of epoch 2):
    # 6 + 5 + 3 x 4 = 23 steps, each of 10 samples, so 23/30 of the FLOPs
    monkeypatch.setattr(build, "build_stream", lambda cfg: tiny_stream())
    common = ["budget.epochs=5", "budget.batch_size=10",
              "eval.every=0"]
    base, _ = run_job(*common)
    removed, _ = run_job(*common, "plugin=[data_removal]",
                         "plugins.data_removal.stages=[0.2,0.37]",
                         f"plugins.data_removal.remove_frac={1 / 3}")
    assert base["steps"] == 2 * 30 and removed["steps"] == 2 * 23
    assert removed["data_removed"] == 2 * 20
    assert removed["train_flops"] * 30 == base["train_flops"] * 23


def test_sieve_keeps_its_fraction_active_and_cycles_every_sample_in():
    plugin = Sieve(keep_frac=0.8, interval=0.1, swap_frac=0.1)
    method, stream = make([plugin])
    n = len(stream.tasks[0].train_y)
    union, sizes, versions = torch.zeros(n, dtype=torch.bool), [], []

    def watch(method):
        mask = method.active_samples(n)
        union.logical_or_(mask)
        sizes.append(int(mask.sum()))
        versions.append(plugin.active_version)

    torch.manual_seed(1)
    run_task(method, stream.tasks[0], Budget(batch_size=10, epochs=5), each_step=watch)
    assert set(sizes) == {round(0.8 * n)}
    assert len(sizes) == 5 * 5  # 48 active samples: 5 batches an epoch, not the planned 6
    assert versions[-1] == 25 // 3  # a swap every round(0.1 * 30) = 3 steps
    assert union.all()
    again, _ = make([Sieve()])
    torch.manual_seed(1)
    again.begin_task(stream.tasks[0])
    again.task_steps = 30
    first = again.active_samples(n).clone()
    torch.manual_seed(1)
    again.begin_task(stream.tasks[0])
    assert torch.equal(again.active_samples(n), first)  # seeded from the global RNG


def mlp_flops(batch, sizes):
    """Forward FLOPs of each Linear of an MLP with layer widths `sizes`."""
    return [2 * batch * a * b for a, b in itertools.pairwise(sizes)]


def test_freeze_prefix_costs_its_forward_only_and_keeps_its_weights():
    plugin = Freeze(blocks=1, start=0.5)
    method, stream = make([plugin], hidden=(8, 6), momentum=0.9, weight_decay=0.1)
    f1, f2, f3 = mlp_flops(10, (16, 8, 6, 4))
    first, second, head = blocks(method.model)
    per_step, snapshots = [], []

    def watch(method):
        per_step.append(method.counter.train_flops)
        snapshots.append([p.detach().clone() for p in (*first.parameters(), head.weight)])

    run_task(method, stream.tasks[0], Budget(batch_size=10, epochs=2), each_step=watch)
    costs = [b - a for a, b in itertools.pairwise([0, *per_step])]
    # the first layer's input needs no gradient: it pays fwd + dW; above it fwd + dW + dX
    assert costs[:6] == [2 * f1 + 3 * f2 + 3 * f3] * 6
    assert costs[6:] == [f1 + 2 * f2 + 3 * f3] * 6  # frozen after step round(0.5 * 12)
    for before, after in itertools.pairwise(snapshots[5:]):
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
        assert not torch.equal(before[2], after[2])  # the head trains on
    assert all(p.requires_grad for p in method.model.parameters())  # thawed at task end
    frozen_two, trace = Freeze(blocks=2, start=0.5, every=0.25), []
    method, stream = make([frozen_two], hidden=(8, 6))
    run_task(method, stream.tasks[0], Budget(batch_size=10, epochs=2),
             each_step=lambda m: trace.append((m.counter.train_flops, frozen_two.n_frozen)))
    # one block after step round(0.5 * 12) = 6, the second round(0.25 * 12) = 3 steps later
    assert [k for _, k in trace] == [0] * 5 + [1, 1, 1, 2, 2, 2, 2]
    flops = [f for f, _ in trace]
    costs = [b - a for a, b in itertools.pairwise([0, *flops])]
    assert costs[6:9] == [f1 + 2 * f2 + 3 * f3] * 3 and costs[9:] == [f1 + f2 + 2 * f3] * 3


def test_blocks_of_the_models_and_the_head_never_freezes():
    mlp = MLP((1, 4, 4), 4, hidden=[8, 6])
    assert blocks(mlp) == [mlp.features[1], mlp.features[3], mlp.head]
    net = ReducedResNet18((3, 32, 32), 10, nf=4)
    found = blocks(net)
    assert len(found) == 6 and found[-1] is net.head and found[1] is net.stages[0]
    assert set(found[0].parameters()) == {*net.conv1.parameters(), *net.bn1.parameters()}
    with pytest.raises(ValueError, match=r"plugins\.freeze\.blocks=3"):
        make([Freeze(blocks=3)], hidden=(8, 6))


@pytest.mark.parametrize("make_plugin,key", [
    (lambda: DataRemoval(remove_frac=0), "plugins.data_removal.remove_frac"),
    (lambda: DataRemoval(remove_frac=1.5), "plugins.data_removal.remove_frac"),
    (lambda: DataRemoval(stages=[]), "plugins.data_removal.stages"),
    (lambda: DataRemoval(stages=[0.1, 2]), "plugins.data_removal.stages"),
    (lambda: Sieve(keep_frac=0), "plugins.sieve.keep_frac"),
    (lambda: Sieve(interval=-0.1), "plugins.sieve.interval"),
    (lambda: Sieve(swap_frac=1.1), "plugins.sieve.swap_frac"),
    (lambda: Freeze(blocks=0), "plugins.freeze.blocks"),
    (lambda: Freeze(start=0), "plugins.freeze.start"),
    (lambda: Freeze(every=2.0), "plugins.freeze.every"),
])
def test_bad_knobs_fail_naming_the_key(make_plugin, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_plugin()


def test_plugin_configs_compose_with_every_knob():
    cfg = compose_config(["method=er", "plugin=[data_removal,sieve,freeze]",
                          "plugins.freeze.every=0.1", "plugins.data_removal.stages=[0.5]"])
    assert dict(cfg.plugins.data_removal) == {
        "_target_": "cl_bench.plugins.data_removal.DataRemoval", "remove_frac": 0.3,
        "stages": [0.5]}
    assert dict(cfg.plugins.sieve) == {"_target_": "cl_bench.plugins.sieve.Sieve",
                                       "keep_frac": 0.8, "interval": 0.1, "swap_frac": 0.1}
    assert dict(cfg.plugins.freeze) == {"_target_": "cl_bench.plugins.freeze.Freeze",
                                        "blocks": 1, "start": 0.5, "every": 0.1}


def test_resume_with_the_plugins_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, ER,
        ["method=er", "memory.size=50", "plugin=[data_removal,sieve,freeze]",
         "budget.epochs=2", "eval.every=0"], stop_at=150)
    assert summary["resumed_after_task"] >= 1
    assert summary["data_removed"] == ref["data_removed"] > 0
    assert summary["steps"] == ref["steps"] and summary["train_flops"] == ref["train_flops"]
