"""The CIFAR-100 internal-replay protocol end to end on small fabricated npz data."""

import subprocess
import sys

import numpy as np
import torch

from cl_bench.data.features import extract
from cl_bench.experiment import run_experiment
from cl_bench.models.conv5 import conv5_extractor, load_conv5
from conftest import REPO, compose_config


def _fabricate(root, name, n_classes, per_class, seed):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", per_class), ("test", 1)):
        y = np.repeat(np.arange(n_classes), n)
        arrays[f"{split}_x"] = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_y"] = y
    (root / name).mkdir(parents=True)
    np.savez(root / name / f"{name.lower()}.npz", **arrays)


TINY = ["budget.iters=2", "budget.batch_size=8", "method.replay_batch_size=8",
        "eval.every=0", "logger.console=false"]


def test_pretrain_frozen_extractor_cached_features_and_presets(tmp_path):
    _fabricate(tmp_path, "CIFAR10", 10, 4, 0)
    _fabricate(tmp_path, "CIFAR100", 100, 2, 1)
    weights = tmp_path / "conv5.npz"
    subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain_extractor.py"),
                    "--out", str(weights), "--root", str(tmp_path), "--epochs", "1",
                    "--batch-size", "16"], check=True, capture_output=True)
    assert len(np.load(weights).files) == 27

    def run(name, *overrides):
        cfg = compose_config([f"data.root={tmp_path}", f"cache.root={tmp_path / 'cache'}",
                              *TINY, *overrides])
        return run_experiment(cfg, tmp_path / name)

    plr = run("plr", "experiment=plr_cifar100", f"benchmark.weights={weights}",
              "model.hidden=[32,32]")
    cache = list((tmp_path / "cache" / "features").glob("cifar100_*.pt"))
    assert len(cache) == 1 and not list((tmp_path / "CIFAR100").glob("*.pt"))
    ir = run("ir", "experiment=ir_cifar100", f"benchmark.weights={weights}",
             "model.hidden=[32,32]")  # reads the cache
    frozen = run("frozen", "benchmark=split_cifar100", "model=conv5_frozen",
                 f"model.weights={weights}", "model.hidden=[32,32]", "method=internal_replay",
                 "optimizer=adam", "budget.epochs=null")
    for s in (plr, ir, frozen):
        assert s["status"] == "completed" and s["steps"] == 20 and s["flops_replay"] > 0
    assert plr["flops_replay"] < ir["flops_replay"]
    # cached features are the frozen extractor's outputs on the images
    extractor = conv5_extractor().eval()
    load_conv5(extractor, weights)
    images = torch.from_numpy(np.load(tmp_path / "CIFAR100" / "cifar100.npz")["train_x"])
    first_task = images.permute(0, 3, 1, 2)[:20]  # classes 0, 1: two images each
    feats = torch.load(cache[0])["train"]
    assert torch.allclose(feats[:4].float(), extract(extractor, first_task[:4]), rtol=1e-3,
                          atol=1e-3)
    # the uncached run pays the extractor's forward on every current batch
    assert frozen["flops_current"] > 10 * ir["flops_current"]
