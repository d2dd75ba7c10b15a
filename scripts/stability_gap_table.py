"""Stability-gap remedies on split MNIST (class-IL, ER, evaluation after every iteration):
min-ACC, gap depth, WC-ACC and final ACC per configuration, mean +/- std over seeds.

    CLBENCH_DATA=../shared/data python scripts/stability_gap_table.py --seeds 0 1 2 --jobs 12

Default protocol: one epoch per task, batch 10 + 10 replayed, 500-sample reservoir, SGD,
`--probe-size` test samples per task evaluated after every iteration. Per-run numbers are
written to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _pool import run_all

CONFIGS = {
    "er": ["method=er"],
    "sgm (all four plugins, LoRA r=8)": ["method=sgm"],
    "sgm, LoRA r=32": ["method=sgm", "plugins.lora.rank=32"],
    "sgm, LoRA r=128": ["method=sgm", "plugins.lora.rank=128"],
    "sgm, LoRA r=256": ["method=sgm", "plugins.lora.rank=256"],
    "sgm without LoRA (class-mean init + frozen old rows + soft targets)": [
        "method=sgm", "plugin=[class_mean_init,freeze_old_rows,soft_targets]"],
    "er + LoRA r=8 alone": ["method=er", "plugin=[lora]"],
    # control for SGM's hypothesis H2 (hidden-layer plasticity causes the gap): the hidden
    # layers frozen after task 0 (a LoRA update scaled to nothing)
    "er, hidden layers frozen after task 0": [
        "method=er", "plugin=[lora]", "plugins.lora.alpha=0.001"],
    "er, model.head=nmc": ["method=er", "model.head=nmc"],
}
METRICS = ["min_acc_class_il", "gap_depth_class_il", "wc_acc_class_il", "acc_class_il"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=None, help="per task; default: 1 epoch")
    ap.add_argument("--probe-size", type=int, default=1000)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    budget = [f"budget.iters={args.iters}", "budget.epochs=null"] if args.iters else []
    common = ["benchmark=split_mnist", *budget, "eval.every=1",
              f"eval.probe_size={args.probe_size}", "eval.plot=false", "logger.console=false"]
    out = args.out or Path(tempfile.mkdtemp(prefix="stability_table_"))
    runs = [(name, seed) for name in args.configs for seed in args.seeds]
    specs = [([*common, *CONFIGS[name], f"seed={seed}"],
              out / f"config{list(CONFIGS).index(name)}_seed{seed}") for name, seed in runs]
    summaries = run_all(specs, args.jobs)
    results: dict[str, list[dict]] = {name: [] for name in args.configs}
    for (name, seed), s in zip(runs, summaries, strict=True):
        results[name].append({"seed": seed, **{m: 100 * s[m] for m in METRICS},
                              "eval_overhead": s["eval_overhead"]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"| configuration | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for name, rows in results.items():
        cells = [f"{np.mean([r[m] for r in rows]):.1f} ± {np.std([r[m] for r in rows]):.1f}"
                 for m in METRICS]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
