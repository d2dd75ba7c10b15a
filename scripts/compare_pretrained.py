"""Methods on a pretrained backbone (issue 17) on split CIFAR-100 "B50" (classes 0-49, 5
tasks x 10, class-IL), the presets' CPU budget (1 epoch per task, batch 32), 3 seeds:
L2P, DualPrompt, CODA-Prompt and the linear probe on the frozen self-pretrained ViT
(`experiment=<row>_cifar100`), and TwF vs DER++ on the self-pretrained reduced ResNet-18
(buffer 500). Accuracy, forgetting (mean +/- std), DualPrompt's E-prompt choice vs the true
task, training FLOPs and wall time. The backbones are pretrained on classes 50-99 by the
first run that needs them (or `clbench-pretrain model=vit`, `model=resnet18_reduced`).

    CLBENCH_DATA=../shared/data python scripts/compare_pretrained.py --jobs 2
    CLBENCH_DATA=../shared/data python scripts/compare_pretrained.py --rows l2p dualprompt

Runs completed under `--out` are reused; per-run numbers go to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

ROWS = {
    "probe": ["experiment=probe_cifar100"],
    "l2p": ["experiment=l2p_cifar100"],
    "dualprompt": ["experiment=dualprompt_cifar100"],
    "coda_prompt": ["experiment=coda_cifar100"],
    "derpp": ["experiment=twf_cifar100", "method=derpp", "method.alpha=0.3", "method.beta=0.9"],
    "twf": ["experiment=twf_cifar100"],
}
COMMON = ["logger.console=false"]
KEYS = ("acc_class_il", "forgetting_class_il", "acc_task_il", "task_select_acc",
        "task_select_acc_per_task", "train_flops", "train_seconds", "wall_seconds",
        "pretrain_test_acc", "weights_cache")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=None, help="subset of the rows")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=Path("outputs/compare_pretrained"))
    ap.add_argument("overrides", nargs="*", help="extra overrides for every run (key=value)")
    args = ap.parse_args()
    names = args.rows or list(ROWS)
    if unknown := set(names) - set(ROWS):
        ap.error(f"--rows {sorted(unknown)}: choose from {list(ROWS)}")
    extra = [*COMMON, *args.overrides]
    found = run_rows({name: ROWS[name] for name in names}, extra, args.seeds, args.out,
                     args.jobs)
    results = {name: [{"seed": seed, **{k: s.get(k) for k in KEYS}} for seed, s in runs]
               for name, runs in found.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    def cell(rows, key, scale=100.0):
        values = [scale * r[key] for r in rows if r.get(key) is not None]
        return mean_sd(values) if values else "-"

    print(f"split CIFAR-100 B50, class-IL, seeds {args.seeds} {' '.join(args.overrides)}\n")
    print("| method | backbone | class-IL ACC % | forgetting % | task-IL ACC % "
          "| E-prompt = true task % | train FLOPs | wall time |\n|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        backbone = "ResNet-18 (nf 20)" if name in ("derpp", "twf") else "ViT (frozen)"
        print(f"| {name} | {backbone} | {cell(rows, 'acc_class_il')} | "
              f"{cell(rows, 'forgetting_class_il')} | {cell(rows, 'acc_task_il')} | "
              f"{cell(rows, 'task_select_acc')} | "
              f"{statistics.mean(r['train_flops'] for r in rows):.3e} | "
              f"{statistics.mean(r['wall_seconds'] for r in rows):.0f} s |")
    backbones = {r["weights_cache"]: r["pretrain_test_acc"] for rows in results.values()
                 for r in rows if r.get("pretrain_test_acc") is not None}
    for path, acc in backbones.items():
        print(f"\nbackbone {Path(path).name}: test accuracy on its pretraining classes "
              f"{100 * acc:.2f} %")


if __name__ == "__main__":
    main()
