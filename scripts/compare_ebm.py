"""The energy-based classifier (Li, Du, van de Ven & Mordatch, CoLLAs 2022) against a
softmax classifier, class-IL, the paper's protocols (Adam lr 1e-4, batch 128, iterations
per task 2000 on MNIST, 5000 on CIFAR-100), mean +/- std over seeds, training FLOPs and time.

    CLBENCH_DATA=../shared/data python scripts/compare_ebm.py --jobs 1
    CLBENCH_DATA=../shared/data python scripts/compare_ebm.py permuted_mnist
    CLBENCH_DATA=../shared/data python scripts/compare_ebm.py cifar100 --iters 1000

split_mnist (the default):

Rows: `ebm` (boundary-aware: negatives from the current task, `experiment=ebm_split_mnist`),
`ebm_task_free` (boundary-agnostic: negatives from the batch, the reference's second gated
layer, `stream=task_free`), `softmax` (`method=finetune` on the 784-400-400-10 MLP of
`experiment=three_scenarios_split` at lr 1e-4, the reference's `sbc` baseline), and with
replay of 128 samples per step from a class-balanced memory of 1000 (the reference's
budget): `ebm_replay` (current 1/t, replayed 1 - 1/t) and `softmax_er` (`method=er`). Runs
completed under `--out` are reused; per-run numbers go to `--out`/results.json.

permuted_mnist: 10 permutations, 100 classes (`experiment=ebm_permuted_mnist`, EBM_MLP with
1000 units) against the reference's softmax baseline (MLP 784-1000-1000-100).
cifar100: split CIFAR-100 on the cached conv5 features (`experiment=ebm_cifar100`, fc
2000-2000 with fixed random class gates) against the softmax MLP 2000-2000 on the same
features.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

REPLAY = ["method.replay_batch_size=128", "memory=class_balanced", "memory.size=1000"]
# the softmax baselines see the EBM presets' inputs: standardised pixels, digits in order
SAME_INPUTS = ["benchmark.normalize=standard", "benchmark.shuffle_classes=false"]
SPLIT_MNIST = {
    "ebm": ["experiment=ebm_split_mnist"],
    "ebm_task_free": ["experiment=ebm_split_mnist", "stream=task_free",
                      "method.negatives=batch", "model.layers=2"],
    "softmax": ["experiment=three_scenarios_split", "method=finetune", "optimizer.lr=0.0001",
                *SAME_INPUTS],
    "ebm_replay": ["experiment=ebm_split_mnist", *REPLAY],
    "softmax_er": ["experiment=three_scenarios_split", "method=er", "optimizer.lr=0.0001",
                   *REPLAY, *SAME_INPUTS],
}
BENCHMARKS = {
    "split_mnist": (SPLIT_MNIST, 2000),
    "permuted_mnist": ({
        "ebm": ["experiment=ebm_permuted_mnist"],
        "softmax": ["experiment=three_scenarios_permuted_cpu", "benchmark.labels=per_task",
                    "benchmark.scenario=class_il", "method=finetune",
                    "model.hidden=[1000,1000]", "optimizer.lr=0.0001"],
    }, 2000),
    "cifar100": ({
        "ebm": ["experiment=ebm_cifar100"],
        "softmax": ["experiment=ebm_cifar100", "method=finetune", "model=mlp"],
    }, 5000),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", nargs="?", default="split_mnist", choices=BENCHMARKS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, help="iterations per task (default: the paper's)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, help="default: outputs/compare_ebm[_<benchmark>]")
    args = ap.parse_args()
    rows, iters = BENCHMARKS[args.benchmark]
    args.iters = args.iters or iters
    args.out = args.out or Path("outputs/compare_ebm" + (
        "" if args.benchmark == "split_mnist" else f"_{args.benchmark}"))
    extra = ["eval.every=0", "logger.console=false", f"budget.iters={args.iters}"]
    found = run_rows(rows, extra, args.seeds, args.out, args.jobs)
    results = {name: [{"seed": seed, "acc": s["acc_class_il"], "train": s["train_flops"],
                       "seconds": s["train_seconds"]} for seed, s in runs]
               for name, runs in found.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{args.benchmark} class-IL, {args.iters} iterations per task, seeds {args.seeds}\n")
    print("| method | class-IL ACC % (mean ± std) | training FLOPs | train time |\n"
          "|---|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {mean_sd([100 * r['acc'] for r in rows])} | "
              f"{statistics.mean(r['train'] for r in rows):.3e} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} s |")


if __name__ == "__main__":
    main()
