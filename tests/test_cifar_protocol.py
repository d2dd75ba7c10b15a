"""The CIFAR-100 internal-replay protocol end to end on small fabricated npz data: the
flagship `clbench benchmark=split_cifar100 method=plr` (the preset
conf/experiment/split_cifar100_mlp_plr.yaml), the extractor found under the weights root,
the feature cache under the cache root (never the data root)."""

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_bench.data.features import extract
from cl_bench.experiment import build_stream, run_experiment
from cl_bench.models.conv5 import conv5_extractor, load_conv5
from conftest import REPO, clbench, compose_config

TINY = ["budget.iters=2", "budget.batch_size=8", "method.replay_batch_size=8",
        "eval.every=0", "logger.console=false"]
PAIRED = ["plr", "internal_replay", "generative_replay", "finetune", "joint"]


def _fabricate(root, name, n_classes, per_class, seed):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", per_class), ("test", 1)):
        y = np.repeat(np.arange(n_classes), n)
        arrays[f"{split}_x"] = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_y"] = y
    (root / name).mkdir(parents=True)
    np.savez(root / name / f"{name.lower()}.npz", **arrays)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The shared layout: <top>/data/{CIFAR10,CIFAR100}/*.npz and, beside data/, the
    extractor pretrained by the script at models/conv5_cifar10/conv5_cifar10.npz."""
    top = tmp_path_factory.mktemp("shared")
    data, weights = top / "data", top / "models" / "conv5_cifar10" / "conv5_cifar10.npz"
    _fabricate(data, "CIFAR10", 10, 4, 0)
    _fabricate(data, "CIFAR100", 100, 2, 1)
    weights.parent.mkdir(parents=True)
    subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain_extractor.py"),
                    "--out", str(weights), "--root", str(data), "--epochs", "1",
                    "--batch-size", "16"], check=True, capture_output=True)
    assert len(np.load(weights).files) == 27
    return data, weights


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Only CLBENCH_DATA set by the user (weights root: its default); caches in tmp_path."""
    def setup(data):
        monkeypatch.setenv("CLBENCH_DATA", str(data))
        monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("CLBENCH_WEIGHTS", raising=False)
        return tmp_path / "cache"
    return setup


def _files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def _read_only(root: Path, on: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode & ~write if on else mode | stat.S_IWUSR)


@pytest.mark.parametrize("iters", [2, pytest.param(20, marks=pytest.mark.slow)])
def test_flagship_runs_the_paper_protocol_from_a_read_only_data_root(shared, env, tmp_path,
                                                                     iters):
    """`clbench benchmark=split_cifar100 method=plr budget.iters=20` (slow: ~1 min on a
    CPU core; 2 iterations in the default suite)."""
    data, weights = shared
    cache = env(data)
    cfg = compose_config(["benchmark=split_cifar100", "method=plr"])
    # the paper protocol (experiment/split_cifar100_mlp_plr), no preset or path named
    assert cfg.pair == "split_cifar100_mlp_plr" and cfg.protocol == "paper"
    assert cfg.benchmark._target_ == "cl_bench.data.features.feature_stream"
    # the PLR authors' network (experiment/split_cifar100_mlp_plr): four levels of 1000
    # under BI-R's budget
    assert list(cfg.model.hidden) == [1000, 1000, 1000] and cfg.model.name == "mlp"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert (cfg.budget.batch_size, cfg.budget.iters, cfg.budget.epochs) == (256, 5000, None)
    assert cfg.method.replay_batch_size == 256 and cfg.method.split == "ceil"
    assert (cfg.method.gate_prop, cfg.method.per_class_prior, cfg.method.z_dim) == (0, True, 100)
    assert Path(cfg.benchmark.weights).resolve() == weights.resolve()
    assert cfg.benchmark.cache == str(cache)

    before = _files(data)
    _read_only(data, True)
    try:
        cfg = compose_config(["benchmark=split_cifar100", "method=plr", f"budget.iters={iters}",
                              "eval.every=0", "logger.console=false"])
        assert cfg.budget.iters == iters  # overrides win
        assert (cfg.budget.batch_size, cfg.method.replay_batch_size) == (256, 256)
        summary = run_experiment(cfg, tmp_path / "run")
    finally:
        _read_only(data, False)
    assert summary["status"] == "completed" and summary["steps"] == 10 * iters
    # the summary names the protocol and the split, and what the split replayed per level
    assert (summary["pair"], summary["protocol"], summary["method.split"]) == (
        "split_cifar100_mlp_plr", "paper", "ceil")
    assert summary["replay_samples_per_step"] == [8, 11, 20, 217]  # test_latent_replay.py
    assert summary["method.generator_extra_layer"] is True  # their VAE: z -> 1000 -> a_3
    assert summary["replay_steps"] == 9 * iters
    assert _files(data) == before  # nothing written under the data root
    cached = list((cache / "features").glob("*.pt"))
    assert len(cached) == 1 and not list(cache.rglob("*.tmp"))
    assert summary["features_cache"] == str(cached[0]) and not summary["features_cache_hit"]
    assert summary["extractor_weights"] == str(weights.resolve())
    assert summary["extractor_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert summary["extractor_sha256"][:16] in cached[0].name


@pytest.mark.parametrize("method", PAIRED[1:])
def test_the_other_paired_methods_compose_the_paper_protocol(method):
    cfg = compose_config(["benchmark=split_cifar100", f"method={method}", "data.root=/data"])
    assert cfg.pair == f"split_cifar100_mlp_{method}"
    assert cfg.benchmark.name == "split_cifar100_features"
    assert (list(cfg.model.hidden), cfg.optimizer._target_, cfg.optimizer.lr) == \
        ([2000, 2000], "torch.optim.Adam", 1e-4)
    assert (cfg.budget.batch_size, cfg.budget.iters, cfg.budget.epochs) == (256, 5000, None)
    assert cfg.method.get("replay_batch_size") == (None if method in ("finetune", "joint")
                                                   else 256)


@pytest.mark.parametrize("method", PAIRED)
def test_protocol_cpu_sizes_the_paired_runs(method):
    cfg = compose_config(["benchmark=split_cifar100", f"method={method}", "protocol=cpu",
                          "data.root=/data"])
    paper = compose_config(["benchmark=split_cifar100", f"method={method}", "data.root=/data"])
    assert (cfg.budget.batch_size, cfg.budget.iters) == (128, 500)
    assert cfg.method.get("replay_batch_size") == (None if method in ("finetune", "joint")
                                                   else 128)
    sized = {"protocol", "budget.batch_size", "budget.iters", "method.replay_batch_size"}
    flat = [{k: v for k, v in _flat(c).items() if k not in sized} for c in (cfg, paper)]
    assert flat[0] == flat[1]  # everything else unchanged


def _flat(cfg) -> dict:
    from cl_bench.identity import resolved_flat

    return resolved_flat(cfg)


def test_presets_are_the_flagship_runs():
    for preset, method in (("plr_cifar100", "plr"), ("ir_cifar100", "internal_replay")):
        a = compose_config([f"experiment={preset}", "data.root=/data"])
        b = compose_config(["benchmark=split_cifar100", f"method={method}", "data.root=/data"])
        assert _flat(a) == _flat(b)
    # the preset takes the method's rule, not one of its own
    assert compose_config(["experiment=plr_cifar100"]).method.rule == \
        compose_config(["method=plr"]).method.rule


def test_other_methods_and_models_on_split_cifar100_keep_the_defaults():
    for overrides in (["method=er"], ["method=derpp"], ["method=plr", "model=conv5_frozen"],
                      ["method=plr", "model=resnet18_reduced"]):
        cfg = compose_config(["benchmark=split_cifar100", *overrides])
        assert cfg.pair is None, overrides
        assert cfg.benchmark._target_ == "cl_bench.data.benchmarks.split_stream"
        assert cfg.benchmark.name == "split_cifar100" and "weights" not in cfg.benchmark
        assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.1
        assert (cfg.budget.batch_size, cfg.budget.epochs, cfg.budget.iters) == (10, 1, None)
    er = compose_config(["benchmark=split_cifar100", "method=er"])
    assert list(er.model.hidden) == [400, 400] and er.method.replay_batch_size == 10
    assert er.benchmark.augment == "crop_flip"


def test_protocol_cpu_without_a_pair_fails_naming_it(tmp_path, monkeypatch, capsys):
    code, out = clbench(["benchmark=split_cifar100", "method=er", "protocol=cpu",
                          f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 1 and "Traceback" not in out
    assert "protocol=cpu" in out and "split_cifar100_mlp_plr" in out


def test_missing_weights_stop_before_training_with_one_clear_message(
        shared, env, tmp_path, monkeypatch, capsys):
    data, _ = shared
    cache = env(data)
    monkeypatch.setenv("CLBENCH_WEIGHTS", str(tmp_path / "nowhere"))
    tried = tmp_path / "nowhere" / "conv5_cifar10" / "conv5_cifar10.npz"
    code, out = clbench(["benchmark=split_cifar100", "method=plr",
                          f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 1 and "Traceback" not in out
    message = out.split("clbench: ")[1].splitlines()[0]  # one paragraph
    for text in (f"benchmark.weights={tried}", "CLBENCH_WEIGHTS", "weights.root",
                 f"python scripts/pretrain_extractor.py --out {tried}"):
        assert text in message, (text, out)
    assert not cache.exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cache_holds_the_extractor_outputs_and_serves_every_split(shared, env, tmp_path):
    """The cache is keyed by weights and data, holds every image's features in dataset
    order, and a run with another class order reads it and gets its own tasks' features;
    the uncached frozen model pays the extractor's forward on every batch."""
    data, weights = shared
    cache = env(data)

    def run(name, *overrides):
        cfg = compose_config([*TINY, "model.hidden=[32,32]", *overrides])
        return run_experiment(cfg, tmp_path / name)

    plr = run("plr", "experiment=plr_cifar100")
    ir = run("ir", "experiment=ir_cifar100")  # reads the cache
    frozen = run("frozen", "benchmark=split_cifar100", "model=conv5_frozen",
                 "method=internal_replay", "optimizer=adam", "budget.epochs=null")
    for s in (plr, ir, frozen):
        assert s["status"] == "completed" and s["steps"] == 20 and s["flops_replay"] > 0
    assert not plr["features_cache_hit"] and ir["features_cache_hit"]
    assert plr["features_cache"] == ir["features_cache"]
    assert plr["flops_replay"] < ir["flops_replay"]
    assert frozen["flops_current"] > 10 * ir["flops_current"]  # the extractor on every batch
    extractor = conv5_extractor().eval()
    load_conv5(extractor, weights)
    with np.load(data / "CIFAR100" / "cifar100.npz") as arrays:
        images = torch.from_numpy(arrays["train_x"]).permute(0, 3, 1, 2)
        labels = torch.from_numpy(arrays["train_y"])
    saved = torch.load(plr["features_cache"])
    assert saved["train"].shape == (200, 1024) and saved["test"].shape == (100, 1024)
    assert torch.allclose(saved["train"][:4].float(), extract(extractor, images[:4]),
                          rtol=1e-3, atol=1e-3)
    # another class order: same cache file, features of that order's first task
    order = list(range(99, -1, -1))
    cfg = compose_config(["benchmark=split_cifar100", "method=plr",
                          f"benchmark.class_order={order}"])
    stream = build_stream(cfg)
    assert stream.provenance["features_cache_hit"]
    assert stream.provenance["features_cache"] == plr["features_cache"]
    first = torch.cat([(labels == c).nonzero().squeeze(1) for c in order[:10]]).sort().values
    assert torch.allclose(stream.tasks[0].train_x.flatten(1).float(),
                          extract(extractor, images[first]), rtol=1e-3, atol=1e-3)
    assert len(list((cache / "features").glob("*.pt"))) == 1


def test_a_corrupt_or_unwritable_cache_is_rebuilt_or_skipped(shared, env, tmp_path):
    data, _ = shared
    cache = env(data)
    cfg = compose_config(["benchmark=split_cifar100", "method=plr"])
    path = Path(build_stream(cfg).provenance["features_cache"])
    assert path.parent == cache / "features"
    path.write_bytes(b"truncated")
    stream = build_stream(cfg)
    assert not stream.provenance["features_cache_hit"] and build_stream(cfg).provenance[
        "features_cache_hit"]
    if os.geteuid() != 0:  # root writes anywhere
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o555)
        cfg = compose_config(["benchmark=split_cifar100", "method=plr",
                              f"cache.root={blocked}"])
        stream = build_stream(cfg)
        assert "cache.root" in stream.provenance["features_cache_error"]
        assert len(stream.tasks) == 10
