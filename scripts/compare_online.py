"""MMKDDA (Han & Liu, EAAI 2022) against ER and DER++ in online class-IL (`stream=online`:
one pass, every training sample once, batches of 10 + 10 replayed), equal memory (a
500-sample reservoir for every row), mean +/- std over seeds: final accuracy, anytime
accuracy (the mean of the continual-evaluation probes), task-IL accuracy of the same runs
(the MMKDDA paper's scenario), training FLOPs (MMKDDA's teacher pass and meta update also
apart) and training time.

    CLBENCH_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/compare_online.py mnist --jobs 1
    CLBENCH_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/compare_online.py cifar100 --jobs 1

`mnist`: split MNIST 5 x 2, the seq-MNIST setting of `experiment=seq_mnist_er` (MLP
784-100-100-10, SGD lr 0.1), probes every 300 steps (4 per task of ~1200 steps).
`cifar100`: split CIFAR-100 10 x 10 on `model=convnet` narrowed to 16-32-64 conv channels
and 128 hidden units (no BatchNorm; ~2.8 MMAC per image), SGD lr 0.1; the CPU budget:
`--train-fraction` (0.2: 1000 images, 100 steps) of each task's training set streamed (the
rest held out with `benchmark.val_fraction`, unused), probes of 100 test samples per seen
task every `--cifar-every` steps (25: 4 per task); the full test set after each task.
MNIST probes: 200 test samples per seen task. Runs completed under `--out` are reused; per-run
numbers go to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

ROWS = {"mmkdda": ["method=mmkdda"], "er": ["method=er"], "derpp": ["method=derpp"],
        # ablations (--methods ...): one MMKDDA addition off at a time
        "mmkdda_no_distill": ["method=mmkdda", "method.distill_weight=0"],
        "mmkdda_no_mix": ["method=mmkdda", "method.mix=none"],
        "mmkdda_no_meta": ["method=mmkdda", "method.inner_steps=1",
                           "method.outer_schedule=constant"]}
DEFAULT = ["mmkdda", "er", "derpp"]
COMMON = ["stream=online", "memory=reservoir", "memory.size=500", "method.replay_batch_size=10",
          "logger.console=false"]


def benchmark_overrides(args) -> tuple[list[str], str]:
    if args.benchmark == "mnist":
        return (["experiment=seq_mnist_er", "eval.every=300"],
                "online split MNIST (MLP 100-100, lr 0.1), probes every 300 steps")
    fraction = args.train_fraction
    return (["benchmark=split_cifar100", "model=convnet", "model.channels=[16,32,64]",
             "model.hidden=128", "optimizer.lr=0.1", f"benchmark.val_fraction={1 - fraction:g}",
             f"eval.every={args.cifar_every}", "eval.probe_size=100"],
            f"online split CIFAR-100 (convnet 16-32-64, hidden 128, lr 0.1), {fraction:g} of "
            f"each task's training set streamed, probes of 100 test samples per seen task "
            f"every {args.cifar_every} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", choices=["mnist", "cifar100"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=DEFAULT, choices=list(ROWS))
    ap.add_argument("--train-fraction", type=float, default=0.2,
                    help="cifar100: fraction of each task's training set streamed")
    ap.add_argument("--cifar-every", type=int, default=25, help="cifar100: steps between probes")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(f"outputs/compare_online_{args.benchmark}")
    extra, setting = benchmark_overrides(args)
    rows = {name: ROWS[name] for name in args.methods}
    found = run_rows(rows, [*extra, *COMMON], args.seeds, out, args.jobs)
    results = {name: [{"seed": seed, "acc": s["acc_class_il"], "task_il": s["acc_task_il"],
                       "anytime": s["anytime_acc_class_il"], "train": s["train_flops"],
                       "teacher": s.get("flops_teacher", 0), "meta": s.get("flops_meta", 0),
                       "seconds": s["train_seconds"]} for seed, s in runs]
               for name, runs in found.items()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"  # rows of earlier invocations (e.g. the ablations) kept
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**earlier, **results}, indent=1))
    print(f"{setting}; reservoir memory 500, batch 10 + 10 replayed; seeds {args.seeds}\n")
    print("| method | class-IL ACC % | anytime class-IL ACC % | task-IL ACC % | training FLOPs "
          "(teacher / meta) | train time |\n|---|---|---|---|---|---|")
    for name, rs in results.items():
        parts = [statistics.mean(r[k] for r in rs) for k in ("train", "teacher", "meta")]
        split = f" ({parts[1]:.2e} / {parts[2]:.2e})" if parts[1] or parts[2] else ""
        print(f"| {name} | {mean_sd([100 * r['acc'] for r in rs])} | "
              f"{mean_sd([100 * r['anytime'] for r in rs])} | "
              f"{mean_sd([100 * r['task_il'] for r in rs])} | {parts[0]:.3e}{split} | "
              f"{statistics.mean(r['seconds'] for r in rs):.0f} s |")


if __name__ == "__main__":
    main()
