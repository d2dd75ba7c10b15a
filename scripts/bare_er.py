"""A bare PyTorch ER loop, the reference the overhead benchmarks measure clbench against.

`er_loop` trains an MLP task after task on in-memory tensors: SGD, each step a batch of the
current task plus `replay` samples drawn uniformly from a reservoir of `mem_size`, the
reservoir insertion vectorised over the batch; after each task it scores every task's test
set (the accuracy matrix, which is what a CL loop is run for). Run as a script it is the
whole process a user would write: import torch and torchvision, read MNIST, train Seq-MNIST
ER (the `experiment=seq_mnist_er` protocol) and print the wall time and final accuracy.

    CLBENCH_DATA=../shared/data python scripts/bare_er.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def mlp(n_in: int, hidden: list[int], n_out: int) -> nn.Module:
    layers, width = [nn.Flatten()], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def er_loop(model, tasks, tests, *, lr: float, batch_size: int, replay: int, mem_size: int,
            mean, std, seed: int, evaluate: bool = True, device="cpu", augment=None,
            steps_per_task: int | None = None):
    """Train on `tasks` [(uint8 x, y)] in order (on `device`, where the data already is;
    `augment(x)` on each normalised batch; at most `steps_per_task` steps per task).
    Returns (seconds, accuracy matrix rows, training images); `tests` [(x, y)] are scored
    after every task when `evaluate`."""
    device = torch.device(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    buf_x = torch.empty(mem_size, *tasks[0][0].shape[1:], dtype=torch.uint8, device=device)
    buf_y = torch.empty(mem_size, dtype=torch.int64, device=device)
    seen = images = 0
    rows = []
    gen = torch.Generator().manual_seed(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for train_x, train_y in tasks:
        order = torch.randperm(len(train_y), generator=gen).to(device)
        for b in range(0, len(order), batch_size)[:steps_per_task]:
            idx = order[b : b + batch_size]
            x, y = train_x[idx], train_y[idx]
            if seen:
                r = torch.randint(0, min(seen, mem_size), (replay,), device=device)
                xb, yb = torch.cat([x, buf_x[r]]), torch.cat([y, buf_y[r]])
            else:
                xb, yb = x, y
            xb = (xb.float() / 255 - mean) / std
            opt.zero_grad()
            loss = F.cross_entropy(model(augment(xb) if augment else xb), yb)
            loss.backward()
            opt.step()
            pos = torch.arange(seen, seen + len(y), device=device)
            slot = torch.where(pos < mem_size, pos,
                               (torch.rand(len(y), device=device) * (pos + 1)).long())
            keep = slot < mem_size
            buf_x[slot[keep]], buf_y[slot[keep]] = x[keep], y[keep]
            seen += len(y)
            images += len(yb)
        if evaluate:
            with torch.inference_mode():
                rows.append([(model((tx.float() / 255 - mean) / std).argmax(1) == ty)
                             .float().mean().item() for tx, ty in tests])
    sync()
    return time.perf_counter() - start, rows, images


def interleaved(commands: dict[str, Callable[[int], tuple[float, str]]], repeats: int,
                label: str) -> None:
    """Runs `commands` (name -> seed -> (seconds, note); "bare" first, then clbench settings)
    `repeats` times, rotating which goes first, and prints each time, then the medians and
    their ratios to the bare loop's as text and as a markdown table labelled `label`."""
    names = list(commands)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            seconds, note = commands[name](i)
            times[name].append(seconds)
            print(f"repeat {i} {name:22s} {seconds:6.2f} s  {note}", flush=True)
    bare = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of "
          f"{repeats}: bare {bare:.2f} s")
    rows = []
    for name in names[1:]:
        med = statistics.median(times[name])
        print(f"  {name:22s} {med:6.2f} s  ratio {med / bare:.3f}")
        setting = "default" if name == "clbench" else name.split()[-1]
        rows.append(f"| {label} | {setting} | {med:.2f} | {bare:.2f} | {med / bare:.3f} |")
    print("\n| comparison | clbench setting | clbench s | bare loop s | ratio |\n"
          "|---|---|---|---|---|\n" + "\n".join(rows))


def main() -> None:
    import torchvision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    root = os.environ["CLBENCH_DATA"]
    train = torchvision.datasets.MNIST(root, train=True)
    test = torchvision.datasets.MNIST(root, train=False)

    def split(ds):
        x, y = ds.data.unsqueeze(1), ds.targets
        return [(x[(y == 2 * t) | (y == 2 * t + 1)], y[(y == 2 * t) | (y == 2 * t + 1)])
                for t in range(5)]

    model = mlp(784, [100, 100], 10)
    seconds, rows, _ = er_loop(model, split(train), split(test), lr=0.1, batch_size=10, replay=10,
                            mem_size=500, mean=0.1307, std=0.3081, seed=args.seed)
    print(json.dumps({"loop_seconds": seconds, "process_seconds": time.perf_counter() - start,
                      "acc": sum(rows[-1]) / len(rows[-1])}))


if __name__ == "__main__":
    main()
