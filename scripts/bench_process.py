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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bare_er import interleaved

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench_process_"))
    clbench = shutil.which("clbench") or sys.exit("clbench is not installed (pip install -e .)")
    common = [clbench, "experiment=seq_mnist_er", f"device={args.device}",
              f"output_root={out}"]
    commands = {
        "bare": [sys.executable, str(HERE / "bare_er.py")],
        "clbench": common,
        "clbench eval.every=0": [*common, "eval.every=0"],
    }

    def timed(name: str):
        def go(seed: int) -> tuple[float, str]:
            cmd = [*commands[name], f"--seed={seed}" if name == "bare" else f"seed={seed}"]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
            return seconds, (f"acc {json.loads(done.stdout)['acc']:.3f}" if name == "bare"
                             else "")
        return go

    try:
        interleaved({name: timed(name) for name in commands}, args.repeats,
                    "whole process (launch to exit)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
