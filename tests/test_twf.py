"""TwF (Boschini et al., ECCV 2022): the reduction to DER++, the frozen sibling, the AFD,
diversity and mask-replay terms by hand, the sibling's FLOPs, and resume."""

import copy
import functools
import math

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.memory.reservoir import Reservoir
from cl_bench.methods.twf import TwF, afd_distance, diversity, mask_bce
from cl_bench.models.mlp import MLP
from cl_bench.models.resnet import ReducedResNet18
from conftest import batch_of, interrupt_and_resume, tiny_stream, train_task

SMALL = ["model=resnet18_reduced", "model.nf=4", "benchmark=digits", "budget.iters=12",
         "memory.size=50", "deterministic=true"]


def build(stream, model=None, **options):
    torch.manual_seed(0)
    model = model or ReducedResNet18((1, 4, 4), stream.n_classes, nf=4)
    return TwF(model=model, memory=Reservoir(size=50),
               preprocess=Preprocess((0.5,), (0.3,), "cpu"),
               optimizer=functools.partial(torch.optim.SGD, lr=0.1),
               class_mask=stream.class_mask(), scenario="class_il",
               **{"lambda_fp": 1.0, "min_resize": 4, **options})


def test_afd_distance_equals_the_hand_computed_value():
    # one channel, 1 x 2 maps, two samples; the margin is the mean of the negatives, -3
    t = torch.tensor([[[[-4.0, 3.0]]], [[[-2.0, 4.0]]]])
    s = torch.tensor([[[[-5.0, 0.0]]], [[[1.0, 2.0]]]])
    ones = torch.ones_like(t)
    # normalised: t0 = (-3, 3)/sqrt(18), s0 = (-1, 0): position 0 is skipped (s <= t <= 0),
    # position 1 costs 0.5; t1 = (-2, 4)/sqrt(20), s1 = (1, 2)/sqrt(5): 0.8 and 0
    torch.testing.assert_close(afd_distance(s, t, ones), torch.tensor((0.25 + 0.4) / 2))
    rho = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 1.0]]]])
    torch.testing.assert_close(afd_distance(s, t, rho), torch.tensor(0.25 / 2))
    # without the overhaul margin and skip: t0 = (-4, 3)/5, sample 0 costs (0.04 + 0.36)/2
    torch.testing.assert_close(afd_distance(s, t, ones, overhaul=False),
                               torch.tensor((0.2 + 0.4) / 2))
    assert afd_distance(t, t, ones, overhaul=False) == 0
    # the margin moves only the sibling: not zero at identity for maps with negatives (a
    # pre-ReLU level, as in the reference), zero for non-negative (post-ReLU) ones
    assert afd_distance(t, t, ones) > 0 and afd_distance(t.relu(), t.relu(), ones) == 0


def test_diversity_and_mask_replay_equal_the_hand_computed_values():
    rho = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(3, 2, 1, 1)
    keep = torch.tensor([True, True, False])  # the third sample (a past task's) is left out
    expected = math.log(1 + math.exp(0.5)) - 0.5 - math.log(2)
    torch.testing.assert_close(diversity(rho, keep, temp=2.0), torch.tensor(expected))
    logits = torch.full((2, 2, 1, 1), math.log(3.0))  # sigmoid 3/4
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    forced = torch.tensor([True, False])
    torch.testing.assert_close(mask_bce(logits, target, forced),
                               torch.tensor((math.log(4 / 3) + math.log(4)) / 2))
    assert mask_bce(logits, target, torch.tensor([False, False])) == 0


def test_with_lambda_fp_zero_it_is_derpp_bit_for_bit(run_job):
    # crop_flip draws from the global RNG each step: the adapters' init must not shift it
    same = ["method.alpha=0.3", "method.beta=0.9", "benchmark.augment=crop_flip", *SMALL]
    der, der_dir = run_job("method=derpp", *same)
    twf, twf_dir = run_job("method=twf", "method.lambda_fp=0", *same)
    for name in ("acc_matrix.csv", "curves.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(twf_dir / name), pd.read_csv(der_dir / name),
                                      check_exact=True)
    assert twf["train_flops"] == der["train_flops"]
    losses = [pd.read_csv(d / "train.csv")["loss"] for d in (twf_dir, der_dir)]
    assert losses[0].equals(losses[1])
    weights = [torch.load(d / "checkpoint.pt", weights_only=False) for d in (twf_dir, der_dir)]
    a, b = (w["method"]["model"] for w in weights)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_sibling_stays_frozen_and_the_first_step_distance_is_zero():
    stream = tiny_stream()
    method = build(stream, overhaul=False)  # see test_afd_distance_...: the margin
    before = copy.deepcopy(method.sibling.state_dict())
    assert all(torch.equal(method.sibling.state_dict()[k], v)
               for k, v in method.model.state_dict().items())
    method.begin_task(stream.tasks[0])
    out = method.observe(batch_of(stream.tasks[0], 0))
    assert out["logged"]["afd_distance"] == 0  # student == sibling before the update
    assert out["terms"]["fp"] > 0  # the diversity term is not
    for s in range(1, 5):
        method.observe(batch_of(stream.tasks[0], s))
    method.end_task(stream.tasks[0])
    train_task(method, stream.tasks[1])
    after = method.sibling.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    moved = method.model.state_dict()
    assert not all(torch.equal(moved[k], v) for k, v in before.items())
    method.begin_task(stream.tasks[1])
    out = method.observe(batch_of(stream.tasks[1], 0))
    assert out["logged"]["afd_distance"] > 0 and "afd_mask_replay" in out["logged"]
    # buffered masks: 0/1 bytes; 4x4 maps (>= min_resize 4) stored at 2x2, the rest as is
    masks = method.memory.stored().extras["twf_masks"]
    assert masks.dtype == torch.uint8 and set(masks.unique().tolist()) <= {0, 1}
    assert masks.shape[1] == 4 * 4 + 4 * 4 + 8 * 4 + 16 * 1 + 32 * 1


def test_the_sibling_forward_is_counted_once_per_student_pass():
    stream = tiny_stream()
    method = build(stream)
    reference = copy.deepcopy(method.sibling)
    with FlopCounterMode(display=False) as mode:
        reference(torch.zeros(10, 1, 4, 4))
    forward_10 = mode.get_total_flops()
    method.begin_task(stream.tasks[0])
    method.observe(batch_of(stream.tasks[0], 0))  # empty memory: one pass of 10
    assert method.counter.components["sibling"] == forward_10
    assert method.counter.components["adapters"] > 0
    method.observe(batch_of(stream.tasks[0], 1))  # then the current and the logit-replay pass
    assert method.counter.components["sibling"] == 3 * forward_10


def test_state_dict_carries_the_adapters_sibling_and_masks():
    stream = tiny_stream()
    method = build(stream)
    train_task(method, stream.tasks[0])
    fresh = build(stream, lambda_fp=1.0)
    fresh.load_state_dict(copy.deepcopy(method.state_dict()))
    for a, b in ((method.adapters, fresh.adapters), (method.sibling, fresh.sibling)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh.begin_task(stream.tasks[1])
    method.begin_task(stream.tasks[1])
    outs = []
    for m in (method, fresh):
        torch.manual_seed(5)
        outs.append(m.observe(batch_of(stream.tasks[1], 0))["terms"]["fp"])
    assert outs[0] == outs[1]


def test_a_resumed_run_restores_the_adapters(tmp_path, monkeypatch):
    resumed, ref = interrupt_and_resume(
        tmp_path, monkeypatch, TwF, ["method=twf", "method.lambda_fp=1", "eval.every=0",
                                     *SMALL], stop_at=30)
    assert resumed["flops_adapters"] == ref["flops_adapters"] > 0
    assert resumed["flops_sibling"] == ref["flops_sibling"]
    assert resumed["acc_class_il"] == ref["acc_class_il"]


def test_models_without_stages_and_bad_values_are_refused():
    stream = tiny_stream()
    with pytest.raises(ConfigError, match="model=resnet18_reduced"):
        build(stream, model=MLP((1, 4, 4), stream.n_classes, hidden=[8]))
    with pytest.raises(ConfigError, match="method.sibling_bn"):
        build(stream, sibling_bn="frozen")
    with pytest.raises(ConfigError, match="method.levels"):
        build(stream, levels=["stages.9"])
