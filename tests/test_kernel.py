"""The method kernel: plugins by config, loss terms, memory losses, task-aware prediction,
strict configs, and the README's "Add a method" example."""

import functools
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.carousel import Carousel
from cl_bench.memory.coreset import Coreset
from cl_bench.methods.agem import AGEM
from cl_bench.methods.der import DER
from cl_bench.methods.derpp import DERpp
from cl_bench.methods.er import ER
from cl_bench.methods.er_ace import ERACE
from cl_bench.methods.gcr import GCR
from cl_bench.metrics.evaluator import Evaluator
from cl_bench.models.mlp import MLP
from conftest import REPO, compose_config, tiny_stream


def build(cls, memory, **options):
    torch.manual_seed(0)
    stream = tiny_stream()
    method = cls(model=MLP((1, 4, 4), 4, hidden=[8]), memory=memory,
                 optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                 preprocess=Preprocess((0.5,), (0.3,), "cpu"), class_mask=stream.class_mask(),
                 scenario="class_il", **options)
    return method, stream


def train(method, stream, steps=6):
    for task in stream:
        method.begin_task(task)
        for s in range(steps):
            idx = torch.arange(s * 10, s * 10 + 10)
            method.observe(Batch(task.train_x[idx], task.train_y[idx],
                                 torch.full((10,), task.id)))
        method.end_task(task)


@pytest.mark.parametrize("cls", [ER, DER, DERpp, ERACE, AGEM])
def test_replay_methods_report_losses_to_a_loss_aware_memory(cls, tmp_path):
    memory = Carousel(size=20, storage_size=100, swap_policy="loss_aware", run_dir=tmp_path)
    method, stream = build(cls, memory)
    train(method, stream)
    memory.close()
    assert torch.isfinite(memory.slot_loss).sum() > 0  # inf until a slot's loss is reported


def test_gcr_reports_replay_losses_too():
    class Recording(Coreset):
        wants_losses = True

        def update(self, index, *, loss=None):
            reports.append((index.clone(), loss.clone()))

    reports = []
    method, stream = build(GCR, Recording(size=20, pool_size=20))
    train(method, stream)
    assert reports and all(len(i) == len(loss) == 10 for i, loss in reports)
    assert all(torch.isfinite(loss).all() for _, loss in reports)


def test_a_memory_without_the_needed_capability_fails_when_built():
    with pytest.raises(ValueError, match="memory=herding"):
        build(__import__("cl_bench.methods.icarl", fromlist=["ICaRL"]).ICaRL,
              Carousel(size=20, run_dir="unused"))


def test_joint_with_class_mean_init_completes(run_job):
    summary, _ = run_job("method=joint", "plugin=[class_mean_init]", "eval.every=0")
    assert summary["status"] == "completed" and summary["acc_class_il"] > 0.8


def test_l2_pull_plugin_composes_with_finetune_and_er_and_lowers_forgetting(run_job):
    # digits, 1 epoch: finetune forgetting (class-IL) 0.993 -> 0.965, ER 0.200 -> 0.166
    for method in ("finetune", "er"):
        plain, _ = run_job(f"method={method}", "eval.every=0")
        pulled, run_dir = run_job(f"method={method}", "eval.every=0", "plugin=[l2_pull]",
                                  "plugins.l2_pull.strength=1")
        assert pulled["forgetting_class_il"] < plain["forgetting_class_il"] - 0.01, method
        train = pd.read_csv(run_dir / "train.csv")
        pull = train.loss_l2_pull.dropna()  # no anchor, no term during the first task
        assert len(pull) and (pull >= 0).all() and pull.max() > 0


def test_loss_terms_and_flop_components_reach_train_csv(run_job):
    summary, run_dir = run_job("method=derpp", "eval.every=0", "budget.iters=30")
    train = pd.read_csv(run_dir / "train.csv")
    assert {"loss_ce", "loss_logit_replay", "loss_label_replay"} <= set(train.columns)
    last = train.iloc[-1]
    assert last.loss == pytest.approx(last.loss_ce + last.loss_logit_replay
                                      + last.loss_label_replay, rel=1e-5)


def test_task_aware_prediction_gets_task_ids_for_task_il_only():
    stream = tiny_stream()
    calls = []

    def predict(x, task_ids=None):  # knows the labels only when told the task
        calls.append(task_ids is not None)
        logits = torch.zeros(len(x), 4)
        if task_ids is not None:
            logits[torch.arange(len(x)), 2 * task_ids + (x[:, 0, 0, 0] / 60).long() % 2] = 1.0
        return logits

    ev = Evaluator(stream, Preprocess((0.0,), (1 / 255,), "cpu"), stream.class_mask(),
                   FlopCounter(), "cpu", probe_size=10, precision="fp32")
    plain = ev.full(predict)
    assert calls == [False] and plain["task_il"].tolist() == [0.5, 0.5]
    aware = ev.full(predict, task_aware=True)
    assert calls[1:] == [False, True]  # one pass without, one with task ids
    assert aware["task_il"].tolist() == [1.0, 1.0] and aware["class_il"].tolist() == [0.5, 0.0]


def test_unknown_keys_fail_at_compose_time_and_in_constructors():
    with pytest.raises(ConfigCompositionException, match="replay_batchsize"):
        compose_config(["method=er", "method.replay_batchsize=99"])
    with pytest.raises(ConfigCompositionException, match="strenght"):
        compose_config(["plugin=[l2_pull]", "plugins.l2_pull.strenght=1"])
    with pytest.raises(TypeError, match="replay_batchsize"):
        build(ER, Carousel(size=20, run_dir="unused"), replay_batchsize=99)


def test_readme_add_a_method_example_is_the_shipped_er_ss():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Add a method"):]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    python = next(code for lang, code in blocks if lang == "python")
    yaml = next(code for lang, code in blocks if lang == "yaml")
    assert python == (REPO / "cl_bench/methods/er_ss.py").read_text()
    assert yaml == (REPO / "conf/method/er_ss.yaml").read_text()


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
def test_er_ss_beats_finetune(run_job):
    er_ss, _ = run_job("method=er_ss", "eval.every=0")
    finetune, _ = run_job("method=finetune", "eval.every=0")
    assert er_ss["acc_class_il"] > finetune["acc_class_il"] + 0.3


def test_plugin_group_lists_options_and_sgm_preset_is_overridable():
    cfg = compose_config(["method=sgm"])
    assert list(cfg.plugins) == ["class_mean_init", "freeze_old_rows", "soft_targets", "lora"]
    cfg = compose_config(["method=sgm", "plugin=[class_mean_init]"])
    assert list(cfg.plugins) == ["class_mean_init"]
    assert Path(REPO / "conf/plugin/l2_pull.yaml").is_file()
