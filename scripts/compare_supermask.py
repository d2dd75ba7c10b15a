"""Per-task supermask methods (SupSup, ExSSNeT, WSN, SoftNet) against fine-tuning, task-IL:
accuracy and forgetting (mean +/- std over seeds), capacity used, mask bytes, task-id
accuracy where inferred, training FLOPs theoretical and as executed.

    CLBENCH_DATA=../shared/data python scripts/compare_supermask.py mnist
    CLBENCH_DATA=../shared/data python scripts/compare_supermask.py cifar100 --seeds 0

`mnist`: split MNIST (5 x 2 classes), MLP 784-400-400-10, Adam, batch 64, 1 epoch per task.
`cifar100`: split CIFAR-100 (10 x 10 classes), `model=convnet` (no BatchNorm), Adam, batch
64, `--epochs` per task (default 2). Masks at density 0.1 (the ExSSNeT paper's default)
unless the row says otherwise; mask learning at lr 0.01 (ExSSNeT's README), weight
training at 0.001 (WSN, ExSSNeT's weight phase). Runs completed under `--out` are reused.
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
    "supsup_d0.5": ["method=supsup", *MASK, "method.density=0.5"],
    "wsn_d0.5": ["method=wsn", *WEIGHTS, "method.density=0.5"],
    "supsup_infer": ["method=supsup", *MASK, "method.infer_task=true"],
}
BENCHMARKS = {
    "mnist": ["benchmark=split_mnist", "model=mlp", "budget.epochs=1"],
    "cifar100": ["benchmark=split_cifar100", "model=convnet"],
}
COMMON = ["scenario=task_il", "optimizer=adam", "budget.batch_size=64", "eval.every=0",
          "logger.console=false"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", choices=list(BENCHMARKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None, help="subset of the rows")
    ap.add_argument("--epochs", type=int, default=2, help="cifar100: epochs per task")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default outputs/compare_supermask_<benchmark>")
    args = ap.parse_args()
    names = args.methods or list(ROWS)
    if unknown := set(names) - set(ROWS):
        ap.error(f"--methods {sorted(unknown)}: choose from {list(ROWS)}")
    out = args.out or Path(f"outputs/compare_supermask_{args.benchmark}")
    extra = [*BENCHMARKS[args.benchmark], *COMMON]
    if args.benchmark == "cifar100":
        extra.append(f"budget.epochs={args.epochs}")
    found = run_rows({name: ROWS[name] for name in names}, extra, args.seeds, out, args.jobs)
    keys = ("acc_task_il", "forgetting_task_il", "acc_class_il", "task_infer_acc",
            "capacity_used", "mask_bytes", "train_flops", "train_flops_dense", "train_seconds")
    results = {name: [{"seed": seed, **{k: s.get(k) for k in keys}} for seed, s in runs]
               for name, runs in found.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))

    def cell(rows, key, scale=100.0):
        values = [scale * r[key] for r in rows if r[key] is not None]
        return mean_sd(values) if values else "-"

    print(f"split {args.benchmark} task-IL, {' '.join(extra)}, seeds {args.seeds}\n")
    print("| row | overrides | task-IL ACC % | forgetting % | class-IL ACC % | task-id acc % "
          "| capacity used % | mask bytes | train FLOPs theoretical | as executed | train time |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        infer = "infer" in name
        mask_bytes = rows[0]["mask_bytes"]
        print(f"| {name} | `{' '.join(ROWS[name])}` | {cell(rows, 'acc_task_il')} | "
              f"{cell(rows, 'forgetting_task_il')} | "
              f"{cell(rows, 'acc_class_il') if infer else '-'} | {cell(rows, 'task_infer_acc')} | "
              f"{cell(rows, 'capacity_used') if mask_bytes else '-'} | "
              f"{mask_bytes if mask_bytes is not None else '-'} | "
              f"{statistics.mean(r['train_flops'] for r in rows):.3e} | "
              f"{statistics.mean(r['train_flops_dense'] for r in rows):.3e} | "
              f"{statistics.mean(r['train_seconds'] for r in rows):.0f} s |")


if __name__ == "__main__":
    main()
