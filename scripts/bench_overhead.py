"""Runner overhead: the same ER optimisation steps on split MNIST through `clbench` and
through a bare PyTorch loop, in one process. Prints both times and their ratio.

    CLBENCH_DATA=../shared/data python scripts/bench_overhead.py [--repeats 3]

The runner's time is its task loop: training plus the continual evaluation it does
every `eval.every` iterations on `eval.probe_size`-sample probes (plus the accuracy
row after each task); data loading is excluded on both sides. The bare loop does the
training steps only: an MLP 784-400-400-10, SGD, batch 10 plus 10 replayed samples
from a 500-sample reservoir, data as in-memory tensors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _pool import run_one

from cl_bench.data.benchmarks import split_stream
from cl_bench.models.mlp import MLP


def bare_loop(stream, batch_size: int, replay: int, mem_size: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = MLP(stream.input_shape, stream.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mean, std = stream.mean[0], stream.std[0]
    buf_x = torch.empty(mem_size, *stream.input_shape, dtype=torch.uint8)
    buf_y = torch.empty(mem_size, dtype=torch.int64)
    seen = 0
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for task in stream:
        order = torch.randperm(len(task.train_y), generator=gen)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            x, y = task.train_x[idx], task.train_y[idx]
            if seen:
                r = torch.randint(0, min(seen, mem_size), (replay,))
                xb, yb = torch.cat([x, buf_x[r]]), torch.cat([y, buf_y[r]])
            else:
                xb, yb = x, y
            xb = (xb.float() / 255 - mean) / std
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            # reservoir insertion, vectorised over the batch
            pos = torch.arange(seen, seen + len(y))
            slot = torch.where(pos < mem_size, pos, (torch.rand(len(y)) * (pos + 1)).long())
            keep = slot < mem_size
            buf_x[slot[keep]], buf_y[slot[keep]] = x[keep], y[keep]
            seen += len(y)
    return time.perf_counter() - start


def runner(overrides: list[str]) -> tuple[float, dict]:
    summary = run_one(overrides, Path("outputs/bench_overhead") / str(time.time_ns()))
    seconds = summary["train_seconds"] + summary["eval_seconds"] + summary["test_seconds"]
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--probe-size", type=int, default=200)
    args = parser.parse_args()
    root = os.environ.get("CLBENCH_DATA")
    overrides = [
        "benchmark=split_mnist", "method=er", "memory=reservoir", "memory.size=500",
        "budget.batch_size=10", "method.replay_batch_size=10", "device=cpu",
        f"eval.every={args.eval_every}", f"eval.probe_size={args.probe_size}",
        "logger.console=false",
    ]
    stream = split_stream(name="split_mnist", dataset="mnist", n_tasks=5, root=root)
    ours, bare = [], []
    for i in range(args.repeats):
        t_bare = bare_loop(stream, 10, 10, 500, seed=i)
        t_ours, summary = runner(overrides + [f"seed={i}"])
        bare.append(t_bare)
        ours.append(t_ours)
        print(f"repeat {i}: clbench {t_ours:.2f} s (eval {summary['eval_seconds']:.2f} s, "
              f"acc_class_il {summary['acc_class_il']:.3f})  bare loop {t_bare:.2f} s  "
              f"ratio {t_ours / t_bare:.3f}")
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    print(f"threads {torch.get_num_threads()}  median clbench {med_ours:.2f} s  "
          f"median bare {med_bare:.2f} s  ratio {med_ours / med_bare:.3f}")


if __name__ == "__main__":
    main()
