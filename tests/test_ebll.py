"""EBLL (Rannen et al., 2017): the code loss against a hand computation, autoencoders that
keep what the task's head needs, the pairing with LwF checked at build, and state."""

from __future__ import annotations

import functools

import pytest
import torch

from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.memory.base import NoMemory
from cl_bench.methods.finetune import Finetune
from cl_bench.models.mlp import MLP
from cl_bench.plugins.ebll import EBLL
from cl_bench.plugins.lwf import LwF
from conftest import batch_of, tiny_stream, train_task


def make(*plugins, scenario="task_il"):
    torch.manual_seed(0)
    stream = tiny_stream()
    method = Finetune(model=MLP((1, 4, 4), stream.n_classes, hidden=[8, 8]),
                      optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                      memory=NoMemory(), preprocess=Preprocess((0.5,), (0.3,), "cpu"),
                      class_mask=stream.class_mask(), scenario=scenario, plugins=list(plugins))
    return method, stream


def ebll(**kw) -> EBLL:
    return EBLL(**{"code_dim": 4, "ae_epochs": 20, "ae_batch_size": 30, **kw})


def test_code_loss_by_hand_after_the_first_task():
    plugin = ebll(strength=3.0)
    method, stream = make(LwF(), plugin)
    train_task(method, stream.tasks[0], steps=6)
    assert len(plugin.encoders) == 1
    batch = batch_of(stream.tasks[1])
    x = method.preprocess(batch.x, train=True)
    ae = plugin.encoders[0]
    # the model still equals its teacher: the codes agree, the term is 0
    assert plugin.loss(batch)["ebll"].item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        method.model.features[1].weight.add_(0.5)  # move the current features away
        expected = 3.0 * ((torch.sigmoid(ae.encoder(method.model.features(x)))
                           - torch.sigmoid(ae.encoder(plugin.lwf().teacher.features(x))))
                          ** 2).mean()
    assert plugin.loss(batch)["ebll"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0


def test_autoencoder_keeps_what_the_tasks_head_needs():
    """Through the autoencoder's reconstruction the task's head classifies about as well as
    through the features themselves (within 5 points)."""
    plugin = ebll(ae_epochs=60, ae_lr=0.01)
    method, stream = make(LwF(), plugin)
    task = stream.tasks[0]
    train_task(method, task, steps=6)
    teacher, ae = plugin.lwf().teacher, plugin.encoders[0]
    with torch.no_grad():
        f = teacher.features(method.preprocess(task.train_x, train=False))
        mask = ~method.class_mask[0]
        direct = teacher.head(f).masked_fill(mask, -float("inf")).argmax(1)
        through = teacher.head(ae(f)).masked_fill(mask, -float("inf")).argmax(1)
        y = task.train_y
        assert (through == y).float().mean() >= (direct == y).float().mean() - 0.05


def test_ebll_without_lwf_before_it_is_refused_naming_lwf():
    with pytest.raises(ConfigError, match="lwf"):
        make(ebll())


def test_state_round_trip_gives_the_same_term():
    plugin = ebll()
    method, stream = make(LwF(), plugin)
    train_task(method, stream.tasks[0], steps=6)
    with torch.no_grad():
        method.model.features[1].weight.add_(0.3)
    batch = batch_of(stream.tasks[1])
    before = plugin.loss(batch)["ebll"].item()
    state = plugin.state_dict()
    plugin.load_state_dict(state)
    assert plugin.loss(batch)["ebll"].item() == pytest.approx(before, rel=1e-7)
