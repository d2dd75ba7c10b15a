"""Prompt methods on a frozen ViT (L2P, DualPrompt, CODA-Prompt), the ViT's FLOP count, and
pretrained backbones (self-pretraining with its cache, hub weights through timm's loader)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from cl_bench.budget.flops import FlopCounter
from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.experiment import run_experiment
from cl_bench.memory.base import NoMemory
from cl_bench.methods.prompt import L2P, CodaPrompt, DualPrompt
from cl_bench.models.vit import ViT
from cl_bench.weights import WeightsMissing, cache_file, freeze_backbone
from conftest import compose_config, tiny_stream, train_task

METHODS = {"l2p": L2P, "dualprompt": DualPrompt, "coda_prompt": CodaPrompt}
TINY = dict(patch=2, dim=8, depth=4, heads=2)


def make(name, stream=None, **kw):
    stream = stream or tiny_stream()
    torch.manual_seed(0)
    vit = ViT(stream.input_shape, stream.n_classes, **TINY)
    if name == "coda_prompt":
        kw.setdefault("pool", 4)
    return METHODS[name](model=vit, memory=NoMemory(),
                         optimizer=functools.partial(torch.optim.Adam, lr=0.05),
                         preprocess=Preprocess(stream.mean, stream.std, "cpu"),
                         class_mask=stream.class_mask("cpu"), scenario="class_il",
                         counter=FlopCounter(), **kw)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_backbone_is_bit_identical_after_a_prompt_run(name):
    method = make(name)
    vit = method.model.vit
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    prompts_before = [p.detach().clone() for n, p in method.model.named_parameters()
                      if not n.startswith("vit.")]
    for task in tiny_stream().tasks:
        train_task(method, task, steps=5)
    for k, v in vit.state_dict().items():
        if k.startswith("head."):
            assert not torch.equal(v, before[k]), "the head trains"
        else:
            assert torch.equal(v, before[k]), k
    after = [p for n, p in method.model.named_parameters() if not n.startswith("vit.")]
    assert any(not torch.equal(a, b) for a, b in zip(after, prompts_before, strict=True))
    trainable = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trainable for n, p in vit.named_parameters()
                   if not n.startswith("head."))


def _step_flops(method, batch):
    """(our count, FlopCounterMode's) of one training step and one prediction."""
    method.begin_task(tiny_stream().tasks[0])
    c = method.counter
    before = c.train_flops
    with FlopCounterMode(display=False) as mode:
        method.observe(batch)
    train = (c.train_flops - before, mode.get_total_flops())
    x = method.preprocess(batch.x)
    before = c.eval_flops
    with FlopCounterMode(display=False) as mode, c.evaluating(), torch.no_grad():
        method.predict(x)  # as the evaluator calls it
    return train, (c.eval_flops - before, mode.get_total_flops())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_flops_match_flop_counter_mode_within_one_percent(name):
    stream = tiny_stream()
    task = stream.tasks[0]
    batch = Batch(task.train_x[:16], task.train_y[:16], torch.zeros(16, dtype=torch.long))
    method = make(name, stream)
    for ours, ref in _step_flops(method, batch):
        assert ref > 0 and abs(ours - ref) <= 0.01 * ref, (ours, ref)


def test_vit_training_flops_equal_flop_counter_mode_and_the_hand_count():
    torch.manual_seed(0)
    vit = ViT((3, 32, 32), 10)  # the CPU ViT: patch 4, dim 128, depth 4, 4 heads
    c = FlopCounter().attach(vit)
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as mode:
        vit(x).sum().backward()
    assert c.train_flops == mode.get_total_flops()
    n, d = 65, 128  # tokens, width
    layer = 2 * n * (3 * d * d + d * d + 8 * d * d) + 2 * 2 * n * n * d  # linears + attention
    forward = 2 * (4 * layer + 2 * 64 * 3 * 16 * d + 2 * d * 10)
    # backward: 2x forward, except the patch embedding's input gradient
    assert c.train_flops == 3 * forward - 2 * 2 * 64 * 3 * 16 * d


def test_attention_counts_prefixes_and_only_the_gradients_it_needs():
    vit = ViT((1, 4, 4), 4, **TINY).requires_grad_(False)
    z = vit.tokens(torch.zeros(3, 1, 4, 4))  # (3, 5, 8): no gradient below
    c = FlopCounter().attach(vit)
    prefix = torch.zeros(3, 2, 5, 8, requires_grad=True)  # 5 key/value prefix tokens
    vit.blocks[0](z, prefix).sum().backward()
    # q k^T with 10 keys: 2 * 3 * 2 heads * 5 * 10 * 4; the same for attn v. Backward: q
    # needs no gradient, k and v (the prefixes) do, and so do the probabilities.
    core = 2 * 3 * 2 * 5 * 10 * 4
    linear = 2 * 3 * 5 * (3 * 64 + 64 + 2 * 8 * 32)
    # backward of the linears: only proj and the MLP see inputs that need a gradient
    linear_back = 2 * 3 * 5 * (64 + 2 * 8 * 32)
    assert c.train_flops == 2 * core + linear + 3 * core + linear_back


def test_l2p_batchwise_vote_makes_a_prediction_depend_on_its_batch():
    stream = tiny_stream()
    x = Preprocess(stream.mean, stream.std, "cpu")(stream.tasks[0].test_x[:20])
    for batchwise, depends in ((False, False), (True, True)):
        method = make("l2p", pool=6, top_n=2, batchwise=batchwise)
        method.begin_task(stream.tasks[0])
        method.model.eval()
        with torch.no_grad():
            alone = torch.cat([method.predict(x[i:i + 1]) for i in range(20)])
            together = method.predict(x)
        assert torch.allclose(alone, together, atol=1e-5) != depends


def test_dualprompt_trains_only_its_tasks_e_prompt_and_scores_the_choice():
    stream = tiny_stream()
    method = make("dualprompt")
    e0 = method.model.e.detach().clone()
    train_task(method, stream.tasks[0], steps=3)
    train_task(method, stream.tasks[1], steps=3)
    e1 = method.model.e.detach()
    # task 1's steps moved only E-prompt 1 (task 0's was trained in task 0 and left)
    assert not torch.equal(e1[1], e0[1]) and not torch.equal(e1[0], e0[0])
    snapshot = method.model.e.detach().clone()
    method.observe(Batch(stream.tasks[1].train_x[:10], stream.tasks[1].train_y[:10],
                         torch.ones(10, dtype=torch.long)))
    assert torch.equal(method.model.e[0], snapshot[0])
    # task selection: the evaluator shows the true ids after a prediction
    method.model.eval()
    x = method.preprocess(torch.cat([stream.tasks[0].test_x[:6], stream.tasks[1].test_x[:4]]))
    true = torch.tensor([0] * 6 + [1] * 4)
    method.predict(x)
    chosen = method.model.chosen.clone()
    method.see_task_ids(true)
    s = method.summary()
    assert s["task_select_acc"] == pytest.approx(float((chosen == true).float().mean()))
    assert s["prompt_use_per_task"][0][0] + s["prompt_use_per_task"][0][1] == 6


def test_coda_prompt_components_are_orthogonal_and_earlier_ones_frozen():
    stream = tiny_stream()
    method = make("coda_prompt", pool=4, length=2)
    model = method.model
    train_task(method, stream.tasks[0], steps=3)
    method.begin_task(stream.tasks[1])
    keys = model.keys.detach()[0].clone()  # layer 0: 2 components per task
    new, old = keys[2:4], keys[0:2]
    assert torch.allclose(new @ new.T, torch.eye(2), atol=1e-5)
    before = old.clone()
    for s in range(3):
        method.observe(Batch(stream.tasks[1].train_x[s * 10:(s + 1) * 10],
                             stream.tasks[1].train_y[s * 10:(s + 1) * 10],
                             torch.ones(10, dtype=torch.long)))
    assert torch.equal(model.keys.detach()[0, 0:2], before)
    assert not torch.equal(model.keys.detach()[0, 2:4], new)


def test_prompt_methods_need_a_vit():
    from cl_bench.models.mlp import MLP

    with pytest.raises(ConfigError, match="model=vit"):
        L2P(model=MLP((1, 4, 4), 4), memory=NoMemory(), optimizer=torch.optim.SGD,
            preprocess=Preprocess((0.5,), (0.3,), "cpu"), class_mask=torch.ones(2, 4).bool(),
            scenario="class_il")


def test_freeze_backbone_trains_only_the_head_and_keeps_batchnorm_statistics():
    from cl_bench.models.resnet import ReducedResNet18

    torch.manual_seed(0)
    net = ReducedResNet18((3, 8, 8), 4, nf=2)
    net.bn1.running_mean.fill_(0.5)
    x = torch.randn(4, 3, 8, 8) + 3
    expected = net.eval()(x)
    freeze_backbone(net)
    net.train()
    assert torch.allclose(net(x), expected, atol=1e-6)  # eval-mode statistics in training
    assert torch.equal(net.bn1.running_mean, torch.full((2,), 0.5))
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["head.weight",
                                                                         "head.bias"]


# -- pretrained backbones ---------------------------------------------------------------

def _fake_cifar100(root: Path) -> Path:
    """100 classes x 4 training and 2 test images of 8x8 noise with a class-coloured pixel."""
    rng = np.random.default_rng(0)
    folder = root / "CIFAR100"
    folder.mkdir(parents=True)
    arrays = {}
    for split, per in (("train", 4), ("test", 2)):
        y = np.repeat(np.arange(100), per)
        x = rng.integers(0, 256, (len(y), 8, 8, 3), dtype=np.uint8)
        x[:, 0, 0, 0] = (y * 2).astype(np.uint8)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    np.savez(folder / "cifar100.npz", **arrays)
    return root


def test_self_pretraining_runs_end_to_end_and_is_cached(tmp_path):
    root = _fake_cifar100(tmp_path / "data")
    base = [f"data.root={root}", f"cache.root={tmp_path / 'cache'}", "logger.console=false",
            "benchmark=split_cifar100_b50", "benchmark.augment=none", "model=vit",
            "model.patch=2", "model.dim=8", "model.depth=1", "model.heads=2",
            "model.pretrain.epochs=2", "model.pretrain.batch_size=50", "method=finetune",
            "optimizer=sgd", "budget.batch_size=10", "eval.every=0"]
    off = compose_config([*base, "model.weights=pretrain", "model.pretrain.auto=false"])
    with pytest.raises(WeightsMissing, match="clbench-pretrain model=vit"):
        run_experiment(off, tmp_path / "refused")
    cfg = compose_config([*base, "model.weights=pretrain"])
    first = run_experiment(cfg, tmp_path / "first")
    assert first["weights_cache_hit"] is False and first["pretrain_steps"] == 2 * 4
    path = Path(first["weights_cache"])
    assert path.is_file() and path.parent == tmp_path / "cache" / "backbones"
    second = run_experiment(cfg, tmp_path / "second")
    assert second["weights_cache_hit"] is True
    # the run is the same whether its weights were just made or read from the cache
    assert second["acc_class_il"] == first["acc_class_il"]
    def losses(name):
        return pd.read_csv(tmp_path / name / "train.csv")["loss"].tolist()

    assert (tmp_path / "first" / "acc_matrix.csv").read_text() == \
        (tmp_path / "second" / "acc_matrix.csv").read_text()
    assert losses("first") == losses("second")
    # and differs from a random backbone's run
    run_experiment(compose_config(base), tmp_path / "scratch")
    assert losses("scratch") != losses("first")
    # the cache key follows the architecture and the pretraining, not `auto`
    assert cache_file(off.model, "c", "d") == cache_file(cfg.model, "c", "d")
    other = compose_config([*base, "model.weights=pretrain", "model.pretrain.epochs=3"])
    assert cache_file(other.model, "c", "d") != cache_file(cfg.model, "c", "d")


def test_weights_from_a_file_must_fit_the_model(tmp_path):
    from cl_bench.weights import load_backbone

    vit = ViT((3, 8, 8), 5, **TINY)
    other = ViT((3, 8, 8), 7, **TINY)
    load_backbone(other, vit.state_dict(), "x.pt")  # the head is never loaded
    assert torch.equal(other.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    with pytest.raises(ConfigError, match="other shape: pos_embed"):
        load_backbone(ViT((3, 16, 16), 5, **TINY), vit.state_dict(), "x.pt")


HUB = """
import sys, torch
from cl_bench.weights import load_backbone, timm_state
from cl_bench.models.vit import ViT
vit = ViT((3, 32, 32), 10, patch=16, dim=192, depth=12, heads=3, resize=224)
load_backbone(vit, timm_state("vit_tiny_patch16_224"), "timm:vit_tiny_patch16_224")
saved = torch.load(sys.argv[1])
assert all(torch.equal(vit.state_dict()[k], v) for k, v in saved.items() if k != "head.weight"
           and k != "head.bias"), "weights differ"
out = vit(torch.zeros(1, 3, 32, 32))
print("LOADED", len(saved), tuple(out.shape))
"""


def test_hub_weights_load_offline_through_timms_loader(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    hub_id = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    torch.manual_seed(1)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    repo = tmp_path / "hf" / "hub" / f"models--{hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(state, repo / "snapshots" / commit / "model.safetensors")
    torch.save(state, tmp_path / "ref.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", HUB, str(tmp_path / "ref.pt")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"LOADED {len(state)} (1, 10)" in out.stdout
    # with the cache gone the loader fails with a message naming the fix, not a traceback
    env["HF_HOME"] = str(tmp_path / "empty")
    out = subprocess.run([sys.executable, "-c", HUB, str(tmp_path / "ref.pt")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "HF_HUB_OFFLINE=1" in out.stderr


def test_the_presets_compose():
    for name, method in (("l2p_cifar100", "l2p"), ("dualprompt_cifar100", "dualprompt"),
                         ("coda_cifar100", "coda_prompt"), ("probe_cifar100", "finetune")):
        cfg = compose_config([f"experiment={name}"])
        assert cfg.method.name == method and cfg.model.name == "vit"
        assert cfg.model.weights == "pretrain" and list(cfg.benchmark.classes) == list(range(50))
        assert list(cfg.model.pretrain.classes) == list(range(50, 100))
    twf = compose_config(["experiment=twf_cifar100"])
    assert (twf.method.name, twf.model.name, twf.model.weights, twf.memory.size) == (
        "twf", "resnet18_reduced", "pretrain", 500)
    probe = compose_config(["experiment=probe_cifar100"])
    assert probe.model.frozen and "TaskLogitMask" in json.dumps(
        OmegaConf.to_container(probe.plugins))


@pytest.mark.parametrize("name,cls", [("dualprompt", DualPrompt), ("coda_prompt", CodaPrompt)])
def test_an_interrupted_prompt_run_resumes_to_the_same_result(tmp_path, monkeypatch, name, cls):
    from conftest import interrupt_and_resume

    summary, ref = interrupt_and_resume(
        tmp_path, monkeypatch, cls,
        ["benchmark=split_cifar100_b50", "model=vit", "model.patch=8", "model.dim=8",
         "model.heads=2", "model.depth=4", f"method={name}", "optimizer=adam",
         "budget.iters=3", "budget.batch_size=8", "eval.every=0"], stop_at=8)
    assert summary["train_flops"] == ref["train_flops"]
    if name == "dualprompt":
        assert summary["task_select_acc"] == ref["task_select_acc"]


def test_benchmark_classes_keeps_those_labels_in_their_order(tmp_path):
    from cl_bench.data.benchmarks import split_stream

    root = _fake_cifar100(tmp_path / "data")
    stream = split_stream(name="x", dataset="cifar100", n_tasks=2, classes=[7, 3, 99, 0],
                          root=root)
    assert stream.n_classes == 4 and len(stream.tasks) == 2
    # the fake images carry their original label in one pixel (label * 2)
    for task, originals in zip(stream.tasks, ([7, 3], [99, 0]), strict=True):
        for y, original in zip(task.classes, originals, strict=True):
            pixels = task.train_x[task.train_y == y][:, 0, 0, 0]
            assert len(pixels) == 4 and (pixels == 2 * original).all()
    with pytest.raises(ValueError, match="benchmark.classes"):
        split_stream(name="x", dataset="cifar100", n_tasks=1, classes=[3, 3], root=root)
