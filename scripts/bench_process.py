"""Whole-process speed: `clbench experiment=seq_mnist_er` against the bare PyTorch loop of
`scripts/bare_er.py` (the same Seq-MNIST ER steps and per-task test-set scores, importing
torch and torchvision and reading MNIST as a user's script would), each as its own process,
timed from launch to exit. The three commands are interleaved, rotating which goes first,
`--repeats` times; prints each time and the medians' ratios.

    CLBENCH_DATA=../shared/data python scripts/bench_process.py [--repeats 5]

clbench runs with its defaults (continual evaluation every 50 steps, CSV logging, the
console) and again with `eval.every=0`; its outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench_process_"))
    clbench = shutil.which("clbench") or sys.exit("clbench is not installed (pip install -e .)")
    common = [clbench, "experiment=seq_mnist_er", f"device={args.device}",
              f"output_root={out}"]
    commands = {"bare": lambda seed: [sys.executable, str(HERE / "bare_er.py"), f"--seed={seed}"],
                "clbench": lambda seed: [*common, f"seed={seed}"],
                "clbench eval.every=0": lambda seed: [*common, "eval.every=0", f"seed={seed}"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    names = list(commands)
    for i in range(args.repeats):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            seconds, stdout = timed(commands[name](i))
            times[name].append(seconds)
            extra = f"  acc {json.loads(stdout)['acc']:.3f}" if name == "bare" else ""
            print(f"repeat {i} {name:22s} {seconds:6.2f} s{extra}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    bare = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of "
          f"{args.repeats}: bare {bare:.2f} s")
    for name in names[1:]:
        med = statistics.median(times[name])
        print(f"  {name:22s} {med:6.2f} s  ratio {med / bare:.3f}")
    print("\n| comparison | setting | clbench s | bare loop s | ratio |\n|---|---|---|---|---|")
    for name in names[1:]:
        med = statistics.median(times[name])
        setting = "default" if name == "clbench" else name.split()[-1]
        print(f"| whole process (launch to exit) | {setting} | {med:.2f} | {bare:.2f} "
              f"| {med / bare:.3f} |")


if __name__ == "__main__":
    main()
