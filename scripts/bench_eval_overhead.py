"""Continual-evaluation overhead: `eval_seconds / train_seconds` of ER runs on split MNIST
(MLP 2x400, SGD, replay batch = batch size, 500-sample reservoir) for several `eval.every`
values on `eval.probe_size`-sample probes per seen task, measured in one process with the
settings interleaved; prints the median over repeats.

    CLBENCH_DATA=../shared/data python scripts/bench_eval_overhead.py --every 1 50 \\
        --probe-size 1000 --batch-size 10 --repeats 3 --precision fp32 bf16

`eval_seconds` counts the continual evaluation (the probes during training), `test_seconds`
the full test sets after each task, `train_seconds` the optimisation steps only; the
overhead is eval_seconds / train_seconds. For reference the script also times a bare
PyTorch loop on the same shapes (the MLP alone, `every` SGD steps on random batches vs one
probe pass over 1..5 seen tasks, averaged): the overhead no runner can go below.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cl_bench.models.mlp import MLP
from cl_bench.study import run_in


def bare_overhead(every: int, probe_size: int, batch: int, precision: str, device: str,
                  repeats: int = 7) -> float:
    """Median over repeats of (probe pass seconds) / (`every` bare SGD steps seconds)."""
    model = MLP((1, 28, 28), 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xb = torch.randn(2 * batch, 1, 28, 28, device=device)
    yb = torch.randint(0, 10, (2 * batch,), device=device)
    probes = torch.randn(5 * probe_size, 1, 28, 28, device=device)
    autocast = ((lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def steps():
        for _ in range(every):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

    def probe_passes():  # the seen tasks grow from 1 to 5 over the stream
        with torch.inference_mode(), autocast():
            for seen in range(1, 6):
                for b in range(0, seen * probe_size, 1000):
                    model(probes[b : min(b + 1000, seen * probe_size)]).argmax(1)

    def timed(fn):
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    return statistics.median(timed(probe_passes) / 5 / timed(steps) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--probe-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--iters", type=int, default=None, help="per task; default: 1 epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 where the device computes it natively")
    args = ap.parse_args()
    budget = [f"budget.iters={args.iters}", "budget.epochs=null"] if args.iters else []
    common = ["benchmark=split_mnist", "method=er", f"budget.batch_size={args.batch_size}",
              f"method.replay_batch_size={args.batch_size}", f"eval.probe_size={args.probe_size}",
              "eval.plot=false", "logger.console=false", *budget]
    out = Path(tempfile.mkdtemp(prefix="eval_overhead_"))
    settings = [(e, p) for e in args.every for p in args.precision]
    results: dict[tuple, list] = {k: [] for k in settings}
    resolved: dict[str, str] = {}
    for r in range(args.repeats):
        for every, precision in settings:
            s = run_in([*common, f"eval.every={every}", f"eval.precision={precision}"],
                        out / f"every{every}_{precision}_{r}")
            results[every, precision].append(
                (s["eval_overhead"], s["train_seconds"], s["eval_seconds"], s["test_seconds"],
                 s["min_acc_class_il"], s["acc_class_il"]))
            resolved[precision], device = s["eval_precision"], s["device"]
    print(f"split MNIST, ER, batch {args.batch_size}+{args.batch_size}, probes "
          f"{args.probe_size}/task, {args.iters or '1 epoch'} iterations/task, "
          f"{args.repeats} repeats (median)")
    table = ["| setting | train s | eval s | overhead | bare PyTorch loop | min-ACC (class-IL) "
             "| final ACC |", "|---|---|---|---|---|---|---|"]
    for (every, precision), rows in results.items():
        ratio, train, ev, test, min_acc, acc = (statistics.median(col)
                                                for col in zip(*rows, strict=True))
        bare = bare_overhead(every, args.probe_size, args.batch_size, resolved[precision],
                             device.split(":")[0])
        print(f"eval.every={every:<4d} {precision} ({resolved[precision]})  train {train:7.2f} s  "
              f"eval {ev:7.2f} s  (test sets {test:5.2f} s)  overhead {100 * ratio:6.1f}%  "
              f"bare-loop overhead {100 * bare:6.1f}%")
        name = precision if precision != "auto" else f"auto ({resolved[precision]})"
        table.append(f"| `eval.every={every}`, {name} | {train:.2f} | {ev:.2f} | "
                     f"{100 * ratio:.1f}% | {100 * bare:.1f}% | {100 * min_acc:.2f} | "
                     f"{100 * acc:.2f} |")
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
