"""Split MNIST class-IL: finetune, generative_replay and PLR under every frequency rule,
same iterations, several seeds. Prints accuracy (mean +/- std) and total replay FLOPs
(generator sampling + classifier replay pass) per method, and whether a PLR rule is
within 2 points of generative_replay at <= 0.6x its replay FLOPs.

    CLBENCH_DATA=../shared/data python scripts/compare_replay_mnist.py --iters 200 --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR
from cl_bench.experiment import run_experiment

METHODS = {
    "finetune": ["method=finetune"],
    "generative_replay": ["method=generative_replay"],
    "plr_uniform": ["method=plr", "method.rule=uniform"],
    "plr_cumulative_weights": ["method=plr", "method.rule=cumulative_weights"],
    "plr_total_weights": ["method=plr", "method.rule=total_weights"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", type=Path, default=Path("outputs/compare_replay_mnist"))
    args = ap.parse_args()
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for name in args.methods:
            overrides = METHODS[name]
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose("config", overrides=[
                    "benchmark=split_mnist", "optimizer=adam", "budget.epochs=null",
                    f"budget.iters={args.iters}", "budget.batch_size=128", "eval.every=0",
                    "logger.console=false", f"seed={seed}", *overrides])
            s = run_experiment(cfg, args.out / f"{name}_seed{seed}")
            results[name].append({"acc": s["acc_class_il"], "replay": s["flops_replay"],
                                  "train": s["train_flops"], "seconds": s["train_seconds"]})
            print(name, seed, json.dumps(results[name][-1]), flush=True)
    gr = results.get("generative_replay")
    if not gr:
        return
    gr_acc = statistics.mean(r["acc"] for r in gr)
    gr_replay = statistics.mean(r["replay"] for r in gr)
    print(f"\n{'method':24s} {'acc % (mean +/- std)':>22s} {'replay FLOPs':>13s} {'x GR':>6s}")
    for name, rows in results.items():
        accs = [100 * r["acc"] for r in rows]
        replay = statistics.mean(r["replay"] for r in rows)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ratio = replay / gr_replay if gr_replay else float("nan")
        ok = name.startswith("plr") and 100 * gr_acc - statistics.mean(accs) <= 2 \
            and ratio <= 0.6
        print(f"{name:24s} {statistics.mean(accs):14.2f} +/- {sd:5.2f} {replay:13.3e} "
              f"{ratio:6.3f}{'  <- within 2 points at <= 0.6x' if ok else ''}")


if __name__ == "__main__":
    main()
