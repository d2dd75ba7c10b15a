"""The energy-based classifier (Li, Du, van de Ven & Mordatch, CoLLAs 2022) against a
softmax classifier on split MNIST class-IL: the paper's protocol (Adam lr 1e-4, batch 128,
2000 iterations per task), mean +/- std over seeds, training FLOPs and time.

    CLBENCH_DATA=../shared/data python scripts/compare_ebm.py --jobs 1

Rows: `ebm` (boundary-aware: negatives from the current task, `experiment=ebm_split_mnist`),
`ebm_task_free` (boundary-agnostic: negatives from the batch, the reference's second gated
layer, `stream=task_free`), `softmax` (`method=finetune` on the 784-400-400-10 MLP of
`experiment=three_scenarios_split` at lr 1e-4, the reference's `sbc` baseline), and with
replay of 128 samples per step from a class-balanced memory of 1000 (the reference's
budget): `ebm_replay` (current 1/t, replayed 1 - 1/t) and `softmax_er` (`method=er`). Runs
completed under `--out` are reused; per-run numbers go to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

REPLAY = ["method.replay_batch_size=128", "memory=class_balanced", "memory.size=1000"]
ROWS = {
    "ebm": ["experiment=ebm_split_mnist"],
    "ebm_task_free": ["experiment=ebm_split_mnist", "stream=task_free",
                      "method.negatives=batch", "model.layers=2"],
    "softmax": ["experiment=three_scenarios_split", "method=finetune", "optimizer.lr=0.0001"],
    "ebm_replay": ["experiment=ebm_split_mnist", *REPLAY],
    "softmax_er": ["experiment=three_scenarios_split", "method=er", "optimizer.lr=0.0001",
                   *REPLAY],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=2000, help="iterations per task")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=Path("outputs/compare_ebm"))
    args = ap.parse_args()
    extra = ["eval.every=0", "logger.console=false", f"budget.iters={args.iters}"]
    found = run_rows(ROWS, extra, args.seeds, args.out, args.jobs)
    results = {name: [{"seed": seed, "acc": s["acc_class_il"], "train": s["train_flops"],
                       "seconds": s["train_seconds"]} for seed, s in runs]
               for name, runs in found.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"split MNIST class-IL, {args.iters} iterations per task, seeds {args.seeds}\n")
    print("| method | class-IL ACC % (mean ± std) | training FLOPs | train time |\n"
          "|---|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {mean_sd([100 * r['acc'] for r in rows])} | "
              f"{statistics.mean(r['train'] for r in rows):.3e} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} s |")


if __name__ == "__main__":
    main()
