"""Runner overhead in one process: the Seq-MNIST ER run (`experiment=seq_mnist_er`: MLP
784-100-100-10, SGD 0.1, batch 10 + 10 replayed from a 500-sample reservoir, one epoch per
task) through `clbench` and through the bare loop of `scripts/bare_er.py` on the same
in-memory tensors. Prints both times and their ratio, with clbench's default continual
evaluation and with `eval.every=0`; the three are interleaved, medians of `--repeats`.

    CLBENCH_DATA=../shared/data python scripts/bench_overhead.py [--repeats 5]

The runner's time is its task loop: training, continual evaluation (every `eval.every`
steps on `eval.probe_size`-sample probes) and the test-set pass after each task (plus one
before training, for forward transfer); data loading and start-up are excluded on both
sides (`scripts/bench_process.py` times whole processes). The bare loop trains the same
steps and scores every test set after each task.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from bare_er import er_loop, interleaved, mlp

from cl_bench.data.benchmarks import split_stream
from cl_bench.study import run_in


def runner(overrides: list[str]) -> tuple[float, dict]:
    summary = run_in(overrides, Path("outputs/bench_overhead") / str(time.time_ns()))
    seconds = summary["train_seconds"] + summary["eval_seconds"] + summary["test_seconds"]
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = ["experiment=seq_mnist_er", f"device={args.device}", "logger.console=false"]
    stream = split_stream(name="split_mnist", dataset="mnist", n_tasks=5,
                          root=os.environ.get("CLBENCH_DATA"))
    tasks = [(t.train_x, t.train_y) for t in stream]
    tests = [(t.test_x, t.test_y) for t in stream]
    mean, std = stream.mean[0], stream.std[0]

    def bare(seed: int) -> tuple[float, str]:
        torch.manual_seed(seed)
        seconds, rows, _ = er_loop(mlp(784, [100, 100], 10), tasks, tests, lr=0.1, batch_size=10,
                                replay=10, mem_size=500, mean=mean, std=std, seed=seed)
        return seconds, f"acc {sum(rows[-1]) / len(rows[-1]):.3f}"

    def ours(extra: list[str]):
        def go(seed: int) -> tuple[float, str]:
            seconds, s = runner([*overrides, *extra, f"seed={seed}"])
            return seconds, (f"acc {s['acc_class_il']:.3f} (train {s['train_seconds']:.2f} "
                             f"eval {s['eval_seconds']:.2f} test {s['test_seconds']:.2f})")
        return go

    commands = {"bare": bare, "clbench": ours([]), "clbench eval.every=0": ours(["eval.every=0"])}
    interleaved(commands, args.repeats, "in one process (train + eval + test s)")

if __name__ == "__main__":
    main()
