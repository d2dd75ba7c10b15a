"""Parameter isolation (issue 14): the per-task supermask methods (SupSup, ExSSNeT, WSN,
SoftNet) and the pruning / attention ones (PackNet, HAT, CP&S, NISPA) against fine-tuning,
task-IL with task ids, 3 seeds: accuracy and forgetting (mean +/- std), class-IL where a
method defines it (SupSup with one-shot task inference, CP&S by subnetwork selection,
NISPA), task-id accuracy where inferred, capacity used, mask bytes, training FLOPs
theoretical (at the masks' density) and as executed, training time.

    CLBENCH_DATA=../shared/data python scripts/compare_isolation.py mnist --jobs 2
    CLBENCH_DATA=../shared/data python scripts/compare_isolation.py cifar100 --jobs 2

`mnist`: split MNIST (5 x 2 classes), MLP 784-400-400-10, 1 epoch per task.
`cifar100`: split CIFAR-100 (10 x 10 classes), the CPU budget: `model=convnet` narrowed to
16-32-64 conv channels and 128 hidden units (no BatchNorm, ~2.8 MMAC per image), `--epochs`
per task (default 2). Both: Adam, batch 64; masks at density 0.1 (the ExSSNeT paper's
default) for the supermask rows, mask learning at lr 0.01 (ExSSNeT's README), weight
training at 0.001 (WSN, ExSSNeT's weight phase, and the pruning methods). Runs completed
under `--out` are reused; per-run numbers go to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

MASK = ["optimizer.lr=0.01"]
WEIGHTS = ["optimizer.lr=0.001"]
ROWS = {
    "finetune": ["method=finetune", *WEIGHTS],
    "supsup": ["method=supsup", *MASK],
    "exssnet": ["method=exssnet", *MASK, "method.weight_lr=0.001"],
    "exssnet_nonexclusive": ["method=exssnet", *MASK, "method.weight_lr=0.001",
                             "method.exclusive=false"],
    "wsn": ["method=wsn", *WEIGHTS],
    "softnet": ["method=softnet", *WEIGHTS],
    "packnet": ["method=packnet", *WEIGHTS],
    "hat": ["method=hat", *WEIGHTS],
    "cps": ["method=cps", *WEIGHTS],
    "nispa": ["method=nispa", *WEIGHTS],
    "supsup_infer": ["method=supsup", *MASK, "method.infer_task=true"],
    # the densities SupSup (permuted MNIST) and WSN use in their papers
    "supsup_d0.5": ["method=supsup", *MASK, "method.density=0.5"],
    "wsn_d0.5": ["method=wsn", *WEIGHTS, "method.density=0.5"],
}
CLASS_IL = {"supsup_infer", "cps", "nispa"}  # rows whose class-IL number means something
BENCHMARKS = {
    "mnist": ["benchmark=split_mnist", "model=mlp", "budget.epochs=1"],
    "cifar100": ["benchmark=split_cifar100", "model=convnet", "model.channels=[16,32,64]",
                 "model.hidden=128"],
}
COMMON = ["scenario=task_il", "optimizer=adam", "budget.batch_size=64", "eval.every=0",
          "logger.console=false"]
KEYS = ("acc_task_il", "forgetting_task_il", "acc_class_il", "task_infer_acc", "capacity_used",
        "capacity_unit", "capacity_per_task", "mask_bytes", "train_flops", "train_flops_dense",
        "train_seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", choices=list(BENCHMARKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None, help="subset of the rows")
    ap.add_argument("--epochs", type=int, default=2, help="cifar100: epochs per task")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default outputs/compare_isolation_<benchmark>")
    args = ap.parse_args()
    names = args.methods or list(ROWS)
    if unknown := set(names) - set(ROWS):
        ap.error(f"--methods {sorted(unknown)}: choose from {list(ROWS)}")
    out = args.out or Path(f"outputs/compare_isolation_{args.benchmark}")
    extra = [*BENCHMARKS[args.benchmark], *COMMON]
    if args.benchmark == "cifar100":
        extra.append(f"budget.epochs={args.epochs}")
    found = run_rows({name: ROWS[name] for name in names}, extra, args.seeds, out, args.jobs)
    results = {name: [{"seed": seed, **{k: s.get(k) for k in KEYS}} for seed, s in runs]
               for name, runs in found.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))

    def cell(rows, key, scale=100.0):
        values = [scale * r[key] for r in rows if r[key] is not None]
        return mean_sd(values) if values else "-"

    print(f"split {args.benchmark} task-IL, {' '.join(extra)}, seeds {args.seeds}\n")
    print("| row | task-IL ACC % | forgetting % | class-IL ACC % | task-id acc % "
          "| capacity used % | mask bytes | train FLOPs theoretical | as executed | train time |"
          "\n|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        mask_bytes = rows[0]["mask_bytes"]
        unit = f" ({rows[0]['capacity_unit']})" if rows[0].get("capacity_unit") else ""
        print(f"| {name} | {cell(rows, 'acc_task_il')} | {cell(rows, 'forgetting_task_il')} | "
              f"{cell(rows, 'acc_class_il') if name in CLASS_IL else '-'} | "
              f"{cell(rows, 'task_infer_acc')} | "
              f"{cell(rows, 'capacity_used') + unit if mask_bytes else '-'} | "
              f"{mask_bytes if mask_bytes is not None else '-'} | "
              f"{statistics.mean(r['train_flops'] for r in rows):.3e} | "
              f"{statistics.mean(r['train_flops_dense'] for r in rows):.3e} | "
              f"{statistics.mean(r['train_seconds'] for r in rows):.0f} s |")


if __name__ == "__main__":
    main()
