"""Split MNIST class-IL: finetune, generative_replay (DGR + distillation), internal_replay
and PLR under every frequency rule, same iterations, several seeds. Prints class-IL and
task-IL accuracy (mean +/- std), total replay FLOPs (generator sampling + classifier replay
pass) and wall time per method, and whether a PLR rule is within 2 points of
generative_replay at <= 0.6x its replay FLOPs.

    CLBENCH_DATA=../shared/data python scripts/compare_replay_mnist.py --iters 2000 --jobs 15

The protocol is the gr_mnist / plr_mnist presets' (2x400 MLP, Adam, batch 128 + 128
replayed, `--iters` per task). The per-run numbers are written to `--out`/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import run_all

METHODS = {
    "finetune": ["experiment=gr_mnist", "method=finetune"],
    "generative_replay": ["experiment=gr_mnist"],
    "internal_replay": ["experiment=gr_mnist", "method=internal_replay"],
    "plr_uniform": ["experiment=plr_mnist", "method.rule=uniform"],
    "plr_cumulative_weights": ["experiment=plr_mnist", "method.rule=cumulative_weights"],
    "plr_total_weights": ["experiment=plr_mnist", "method.rule=total_weights"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000, help="iterations per task")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=Path("outputs/compare_replay_mnist"))
    args = ap.parse_args()
    runs = [(name, seed) for name in args.methods for seed in args.seeds]
    specs = [([*METHODS[name], f"budget.iters={args.iters}", "eval.every=0",
               "logger.console=false", f"seed={seed}"], args.out / f"{name}_seed{seed}")
             for name, seed in runs]
    summaries = run_all(specs, args.jobs)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for (name, seed), s in zip(runs, summaries, strict=True):
        results[name].append({"seed": seed, "acc": s["acc_class_il"],
                              "acc_task": s.get("acc_task_il"),
                              "replay": s["flops_replay"], "train": s["train_flops"],
                              "seconds": s["train_seconds"]})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    gr = results.get("generative_replay")
    gr_acc = statistics.mean(100 * r["acc"] for r in gr) if gr else None
    gr_replay = statistics.mean(r["replay"] for r in gr) if gr else None
    print(f"split MNIST class-IL, {args.iters} iterations/task, seeds {args.seeds}\n")
    print("| method | class-IL ACC % (mean ± std) | task-IL ACC % | replay FLOPs | "
          "× GR replay FLOPs | train FLOPs | train time |\n|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        accs = [100 * r["acc"] for r in rows]
        tasks = [100 * r["acc_task"] for r in rows if r.get("acc_task") is not None]
        replay = statistics.mean(r["replay"] for r in rows)
        ratio = replay / gr_replay if gr_replay else float("nan")
        ok = (name.startswith("plr") and gr_acc is not None
              and gr_acc - statistics.mean(accs) <= 2 and ratio <= 0.6)
        task = f"{statistics.mean(tasks):.2f}" if tasks else "–"
        print(f"| {name} | {_mean_sd(accs)} | {task} | {replay:.3e} | {ratio:.3f} | "
              f"{statistics.mean(r['train'] for r in rows):.3e} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} s |"
              f"{' within 2 points of GR at <= 0.6x' if ok else ''}")


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    per_seed = " / ".join(f"{v:.1f}" for v in values)
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({per_seed})"

if __name__ == "__main__":
    main()
