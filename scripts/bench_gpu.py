"""Device throughput: split CIFAR-100 (10 tasks), reduced ResNet-18, ER with batch 32 + 32
replayed from a 500-sample reservoir, one epoch per task, crop+flip augmentation on the
device: images per second of `clbench` (its defaults: FLOP counting, loss logging, continual
evaluation every 50 steps) against a bare PyTorch loop doing the same steps with the data
resident on the device. Medians of `--repeats`, interleaved.

    CLBENCH_DATA=../shared/data python scripts/bench_gpu.py [--device cuda] [--iters N]

On CUDA it also reports the GPU's utilisation during the clbench runs (nvidia-smi, sampled
every 100 ms) and counts host synchronisations in the training loop with
`torch.cuda.set_sync_debug_mode("warn")` over a short run: the loop must not sync per step
(expected: one per `logger.train_every` steps, the loss row, and one per continual
evaluation). On CPU it runs the same comparison (use `--iters` to keep it short).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from bare_er import er_loop

from cl_bench.data.benchmarks import split_stream
from cl_bench.data.transforms import random_crop_flip
from cl_bench.models.resnet import ReducedResNet18
from cl_bench.study import run_in

BATCH, REPLAY, MEMORY = 32, 32, 500


def bare_loop(stream, device, seed: int, iters: int | None) -> tuple[float, int]:
    """(seconds, images) of the ER steps on device-resident data; no host sync inside."""
    torch.manual_seed(seed)
    model = ReducedResNet18(stream.input_shape, stream.n_classes).to(device)
    mean = torch.tensor(stream.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(stream.std, device=device).view(1, -1, 1, 1)
    tasks = [(t.train_x.to(device), t.train_y.to(device)) for t in stream]
    seconds, _, images = er_loop(model, tasks, [], lr=0.1, batch_size=BATCH, replay=REPLAY,
                                 mem_size=MEMORY, mean=mean, std=std, seed=seed,
                                 evaluate=False, device=device, steps_per_task=iters,
                                 augment=lambda x: random_crop_flip(x, 4))
    return seconds, images


def overrides(device: str, iters: int | None) -> list[str]:
    return ["benchmark=split_cifar100", "model=resnet18_reduced", "method=er",
            "memory=reservoir", f"memory.size={MEMORY}", f"budget.batch_size={BATCH}",
            f"method.replay_batch_size={REPLAY}", "optimizer.lr=0.1", f"device={device}",
            "logger.console=false", *([f"budget.iters={iters}"] if iters else
                                      ["budget.epochs=1"])]


class Utilisation:
    """nvidia-smi sampling the GPU's utilisation in the background (None without it)."""

    def __enter__(self):
        exe = shutil.which("nvidia-smi")
        self.proc = exe and subprocess.Popen(
            [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.samples = []
        if self.proc:
            self.proc.terminate()
            out = self.proc.communicate()[0]
            self.samples = [float(v) for v in out.split() if v.replace(".", "").isdigit()]

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def count_syncs(device: str, out: Path) -> tuple[int, int]:
    """(host syncs, steps) of a short clbench run under CUDA's sync debug mode."""
    steps = 200
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            summary = run_in(overrides(device, steps // 10), out / "syncs")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs), summary["steps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, help="steps per task (default: one epoch)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_gpu"))
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    stream = split_stream(name="split_cifar100", dataset="cifar100", n_tasks=10,
                          root=os.environ.get("CLBENCH_DATA"))
    device = args.device
    name = (torch.cuda.get_device_name() if device == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)")
    rates: dict[str, list[float]] = {"bare": [], "clbench": [], "clbench_train": []}
    util = []
    for i in range(args.repeats):
        for which in (("bare", "clbench") if i % 2 == 0 else ("clbench", "bare")):
            if which == "bare":
                seconds, images = bare_loop(stream, device, i, args.iters)
                rates["bare"].append(images / seconds)
                print(f"repeat {i} bare     {images / seconds:8.0f} img/s ({seconds:.1f} s)",
                      flush=True)
                continue
            with Utilisation() as u:
                s = run_in([*overrides(device, args.iters), f"seed={i}"],
                            args.out / f"run{i}")
            images = s["steps"] * (BATCH + REPLAY) - REPLAY  # the first step replays nothing
            total = s["train_seconds"] + s["eval_seconds"]
            rates["clbench"].append(images / total)
            rates["clbench_train"].append(images / s["train_seconds"])
            util.append(u.mean)
            print(f"repeat {i} clbench  {images / total:8.0f} img/s ({total:.1f} s: train "
                  f"{s['train_seconds']:.1f}, continual eval {s['eval_seconds']:.1f}; "
                  f"acc_class_il {s['acc_class_il']:.3f})"
                  + (f"  GPU utilisation {u.mean:.0f}%" if u.mean is not None else ""),
                  flush=True)
    bare = statistics.median(rates["bare"])
    print(f"{name}, torch {torch.__version__}, medians of {args.repeats}:")
    print(f"  bare loop            {bare:8.0f} img/s")
    for key, label in (("clbench", "clbench (train+eval)"), ("clbench_train", "clbench (train)")):
        med = statistics.median(rates[key])
        print(f"  {label:20s} {med:8.0f} img/s  ratio {med / bare:.3f}")
    if any(u is not None for u in util):
        print(f"  GPU utilisation during clbench runs: "
              f"{statistics.median([u for u in util if u is not None]):.0f}%")
    if device == "cuda":
        syncs, steps = count_syncs(device, args.out)
        print(f"  host syncs in a {steps}-step clbench run: {syncs} "
              f"({syncs / steps:.3f} per step)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
