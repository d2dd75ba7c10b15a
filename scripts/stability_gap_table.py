"""Stability-gap remedies on split MNIST (class-IL, ER, evaluation after every iteration):
min-ACC, gap depth, WC-ACC and final ACC per configuration, mean +/- std over seeds.

    CLBENCH_DATA=../shared/data python scripts/stability_gap_table.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR
from cl_bench.experiment import run_experiment

CONFIGS = {
    "er": ["method=er"],
    "sgm": ["method=sgm"],
    "er + class-mean init + frozen old rows": [
        "method=er", "method.head_init=class_mean", "method.freeze_old_rows=true"],
    "er, model.head=nmc": ["method=er", "model.head=nmc"],
}
METRICS = ["min_acc_class_il", "gap_depth_class_il", "wc_acc_class_il", "acc_class_il"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=300, help="iterations per task (batch 10)")
    ap.add_argument("--probe-size", type=int, default=100)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = ap.parse_args()
    common = ["benchmark=split_mnist", f"budget.iters={args.iters}", "budget.epochs=null",
              "eval.every=1", f"eval.probe_size={args.probe_size}", "eval.plot=false",
              "logger.console=false"]
    out = Path(tempfile.mkdtemp(prefix="stability_table_"))
    print(f"| configuration | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for name in args.configs:
        overrides = CONFIGS[name]
        values = {m: [] for m in METRICS}
        for seed in args.seeds:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose("config", overrides=[*common, *overrides, f"seed={seed}"])
            summary = run_experiment(cfg, out / f"{name.replace(' ', '_')}_{seed}")
            for m in METRICS:
                values[m].append(100 * summary[m])
        cells = [f"{np.mean(v):.1f} +/- {np.std(v):.1f}" for v in values.values()]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
