"""Regularisation, distillation and projection methods on the "three scenarios" protocol
(MLP 784-400-400, Adam 1e-3, batch 128, 2000 iterations per task): split MNIST task-IL
and permuted MNIST domain-IL, several seeds, next to the published numbers. Writes the
markdown table of README "Regularisation, distillation and projection".

    CLBENCH_DATA=../shared/data python scripts/regularisation_table.py --jobs 2

Runs already completed under `--out` are reused, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import run_all

PROTOCOLS = {
    # split MNIST with the 2022 values, standardised inputs, digits in order; permuted MNIST
    # on the CPU-sized protocol (scripts/three_scenarios_table.py runs the published ones)
    "split_task": ["experiment=three_scenarios_split_2022", "scenario=task_il",
                   "benchmark.normalize=standard", "benchmark.shuffle_classes=false"],
    "perm_domain": ["experiment=three_scenarios_permuted_cpu"],
}
# Per-protocol knobs: van de Ven's `params/param_values.py` (split MNIST: the NMI 2022
# values; permuted MNIST: its permMNIST values, tuned there for 2x1000 units, lr 1e-4).
METHODS: dict[str, dict[str, list[str]]] = {
    "finetune": {"split_task": [], "perm_domain": []},
    "ewc": {"split_task": ["plugins.ewc.strength=1e5"],
            "perm_domain": ["plugins.ewc.strength=100", "plugins.ewc.fisher_samples=1000"]},
    "online_ewc": {"split_task": ["plugins.ewc.strength=1e5"],
                   "perm_domain": ["plugins.ewc.strength=100",
                                   "plugins.ewc.fisher_samples=1000"]},
    "si": {"split_task": ["plugins.si.strength=10"], "perm_domain": ["plugins.si.strength=10"]},
    "mas": {"split_task": [], "perm_domain": []},
    "imm_mean": {"split_task": [], "perm_domain": []},
    "imm_mode": {"split_task": [], "perm_domain": []},
    "lwf": {"split_task": [], "perm_domain": []},
    "plwf": {"split_task": [], "perm_domain": []},
    "owm": {"split_task": [], "perm_domain": []},
    "eowm": {"split_task": [], "perm_domain": []},
    "rank_update": {"split_task": []},
}
# van de Ven & Tolias 2019 ("Three scenarios for continual learning", arXiv 1904.07734),
# Tables 4 (split MNIST, this protocol) and 5 (permuted MNIST, 2x1000 units, lr 1e-4,
# 5000 iterations per task), mean over 20 seeds.
PUBLISHED = {
    "split_task": {"finetune": 87.19, "ewc": 98.64, "online_ewc": 99.12, "si": 99.09,
                   "lwf": 99.57},
    "perm_domain": {"finetune": 78.51, "ewc": 94.31, "online_ewc": 94.42, "si": 95.33,
                    "lwf": 72.64},
}
ACC = {"split_task": "acc_task_il", "perm_domain": "acc_domain_il"}


def _completed(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "completed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--iters", type=int, default=2000, help="iterations per task")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=Path("outputs/regularisation_table"))
    ap.add_argument("--report-only", action="store_true",
                    help="tabulate the runs already completed under --out; train nothing")
    args = ap.parse_args()
    runs = [(p, m, s) for p in args.protocols for m in args.methods if p in METHODS[m]
            for s in args.seeds]
    if args.report_only:
        runs = [r for r in runs if _completed(args.out / r[0] / f"{r[1]}_seed{r[2]}")]
    specs = [([*PROTOCOLS[p], f"method={m}", *METHODS[m][p], f"budget.iters={args.iters}",
               "eval.every=0", "logger.console=false", f"seed={s}"],
              args.out / p / f"{m}_seed{s}") for p, m, s in runs]
    summaries = run_all(specs, args.jobs)
    results: dict = {}
    for (p, m, s), summary in zip(runs, summaries, strict=True):
        extra = {k: v for k, v in summary.items() if k.startswith("flops_")}
        results.setdefault(p, {}).setdefault(m, []).append(
            {"seed": s, "acc": 100 * summary[ACC[p]], "train_flops": summary["train_flops"],
             "seconds": summary["train_seconds"], **extra})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for p, by_method in results.items():
        base = (statistics.mean(r["acc"] for r in by_method["finetune"])
                if "finetune" in by_method else None)
        print(f"\n{p} ({ACC[p]}), {args.iters} iterations/task\n")
        print("| method | seeds | ACC % (mean ± std) | published | vs finetune | train FLOPs | "
              "extra FLOPs (component) |\n|---|---|---|---|---|---|---|")
        for m, rows in by_method.items():
            accs = [r["acc"] for r in rows]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            pub = PUBLISHED.get(p, {}).get(m)
            comps = {k: statistics.mean(r[k] for r in rows) for k in rows[0]
                     if k.startswith("flops_") and rows[0][k]}
            extra = ", ".join(f"{v:.2e} ({k[6:]})" for k, v in comps.items()) or "–"
            print(f"| {m} | {len(accs)} | {statistics.mean(accs):.2f} ± {sd:.2f} | "
                  f"{f'{pub:.2f}' if pub else '–'} | "
                  f"{'–' if base is None else f'{statistics.mean(accs) - base:+.2f}'} | "
                  f"{statistics.mean(r['train_flops'] for r in rows):.3e} | {extra} |")


if __name__ == "__main__":
    main()
