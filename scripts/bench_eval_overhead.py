"""Continual-evaluation overhead: `eval_seconds / train_seconds` of ER runs on split MNIST
(MLP 2x400, SGD, replay batch = batch size, 500-sample reservoir) for several `eval.every`
values on `eval.probe_size`-sample probes per seen task, measured in one process with the
settings interleaved; prints the median over repeats.

    CLBENCH_DATA=../shared/data python scripts/bench_eval_overhead.py --every 1 50 \\
        --probe-size 1000 --batch-size 10 --repeats 3 --precision fp32 bf16

`eval_seconds` counts the continual evaluation (the probes during training), `test_seconds`
the full test sets after each task, `train_seconds` the optimisation steps only; the
overhead is eval_seconds / train_seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _pool import run_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--probe-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--iters", type=int, default=None, help="per task; default: 1 epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    budget = [f"budget.iters={args.iters}", "budget.epochs=null"] if args.iters else []
    common = ["benchmark=split_mnist", "method=er", f"budget.batch_size={args.batch_size}",
              f"method.replay_batch_size={args.batch_size}", f"eval.probe_size={args.probe_size}",
              "eval.plot=false", "logger.console=false", *budget]
    out = Path(tempfile.mkdtemp(prefix="eval_overhead_"))
    settings = [(e, p) for e in args.every for p in args.precision]
    results: dict[tuple, list] = {k: [] for k in settings}
    for r in range(args.repeats):
        for every, precision in settings:
            s = run_one([*common, f"eval.every={every}", f"eval.precision={precision}"],
                        out / f"every{every}_{precision}_{r}")
            results[every, precision].append(
                (s["eval_overhead"], s["train_seconds"], s["eval_seconds"], s["test_seconds"]))
    print(f"split MNIST, ER, batch {args.batch_size}+{args.batch_size}, probes "
          f"{args.probe_size}/task, {args.iters or '1 epoch'} iterations/task, "
          f"{args.repeats} repeats (median)")
    for (every, precision), rows in results.items():
        ratio, train, ev, test = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"eval.every={every:<4d} {precision}  train {train:7.2f} s  eval {ev:7.2f} s  "
              f"(test sets {test:5.2f} s)  overhead {100 * ratio:6.1f}%")


if __name__ == "__main__":
    main()
