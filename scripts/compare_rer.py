"""Relational Experience Replay (Wang et al., arXiv 2112.15402) against the replay method it
wraps, on seq-MNIST: accuracy, training FLOPs with the meta steps' share, and the learned
replay/current weight ratio per task.

    CLBENCH_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/compare_rer.py --jobs 1

Rows: `er`, `derpp`, `er_ace` on the presets `experiment=seq_mnist_<base>` (split MNIST
5x2, MLP 784-100-100-10, SGD, batch 10, 1 epoch per task; lr 0.1 for ER and ER-ACE, DER++
at its Mammoth best args lr 0.03, alpha 1, beta 0.5) and `rer_<base>` on
`experiment=seq_mnist_rer_<base>` (the same plus the relation net: a meta step every 5
steps of tasks >= 2, learned weights from half of each task), all with a 200-sample
reservoir. Control rows `rer_<base>_const` (after the RER rows have run): the RER preset
with `method.constant_weights` set to the RER rows' mean learned weights (tasks 2-5, all
seeds) and no meta step, asking whether the relation net's per-pair weighting beats
the same average weighting held fixed. Runs completed under `--out` are reused; per-run
numbers go to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

BASES = ("er", "derpp", "er_ace")
ROWS = {name: [f"experiment=seq_mnist_{name}"]
        for base in BASES for name in (base, f"rer_{base}")}
WEIGHTS = {"er": ("w_new", "w_buf"), "er_ace": ("w_new", "w_buf"),
           "derpp": ("w_new", "w_mse", "w_buf")}  # the order of method.constant_weights


def mean_weights(runs: list[tuple[int, dict]], base: str) -> list[float]:
    """Mean learned weights of an RER row over tasks 2-5 and its seeds."""
    return [round(statistics.mean(w for _, s in runs for w in s[f"rer_{name}_per_task"][1:]), 4)
            for name in WEIGHTS[base]]


def ratios(rows: list[dict]) -> str:
    """Mean over seeds of the learned w_buf / w_new of each task from the second."""
    per_task = zip(*(r["ratio"][1:] for r in rows), strict=True)
    return " / ".join(f"{statistics.mean(t):.2f}" for t in per_task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--memory", type=int, default=200, help="reservoir size")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=Path("outputs/compare_rer"))
    args = ap.parse_args()
    extra = ["eval.every=0", "logger.console=false", f"memory.size={args.memory}"]
    found = run_rows(ROWS, extra, args.seeds, args.out, args.jobs)
    constants = {base: mean_weights(found[f"rer_{base}"], base) for base in BASES}
    controls = {f"rer_{base}_const": [f"experiment=seq_mnist_rer_{base}",
                                      f"method.constant_weights=[{','.join(map(str, w))}]"]
                for base, w in constants.items()}
    found |= run_rows(controls, extra, args.seeds, args.out, args.jobs)
    results = {name: [{"seed": seed, "class_il": s["acc_class_il"], "task_il": s["acc_task_il"],
                       "train": s["train_flops"], "meta": s.get("flops_meta", 0),
                       "seconds": s["train_seconds"],
                       "ratio": s.get("rer_ratio_buf_new_per_task"),
                       "w_new": s.get("rer_w_new_per_task"),
                       "w_buf": s.get("rer_w_buf_per_task"),
                       "w_mse": s.get("rer_w_mse_per_task")} for seed, s in runs]
               for name, runs in found.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"seq-MNIST, reservoir {args.memory}, seeds {args.seeds}; constant weights of "
          f"the controls: {constants}\n")
    print("| method | class-IL % | task-IL % | train FLOPs | meta share | train time | "
          "w_buf/w_new, tasks 2-5 |\n|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        train = statistics.mean(r["train"] for r in rows)
        meta = statistics.mean(r["meta"] / r["train"] for r in rows)
        print(f"| {name} | {mean_sd([100 * r['class_il'] for r in rows])} | "
              f"{mean_sd([100 * r['task_il'] for r in rows])} | {train:.3e} | "
              f"{100 * meta:.1f} % | {statistics.mean(r['seconds'] for r in rows):.0f} s | "
              f"{ratios(rows) if rows[0]['ratio'] else '-'} |")
    print("\nMean learned weights per task (seeds averaged; task 1 has none):\n\n"
          "| method | weight | task 2 | task 3 | task 4 | task 5 |\n|---|---|---|---|---|---|")
    for base in BASES:
        rows = results[f"rer_{base}"]
        for name in WEIGHTS[base]:
            per_task = zip(*(r[name][1:] for r in rows), strict=True)
            print(f"| rer_{base} | {name} | "
                  + " | ".join(f"{statistics.mean(t):.3f}" for t in per_task) + " |")


if __name__ == "__main__":
    main()
