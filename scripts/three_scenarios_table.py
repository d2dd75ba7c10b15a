"""The "three scenarios" tables on the published protocols (van de Ven & Tolias 2019):
split MNIST in task-, domain- and class-IL (`experiment=three_scenarios_split`) and
permuted MNIST (`experiment=three_scenarios_permuted`), each method with the 2019 code's
values for its scenario, next to the paper's mean ± SEM. Writes the markdown tables of
README "Results on the three-scenarios protocol".

    CLBENCH_DATA=../shared/data python scripts/three_scenarios_table.py --protocols split_task \
        split_domain split_class

Runs are ordered seed by seed (every cell gets seed 0 first); runs already completed under
`--out` are reused, so an interrupted table resumes. `--report-only` tabulates what is there.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import traceback
from pathlib import Path

from _pool import run_one

PROTOCOLS = {
    "split_task": ["experiment=three_scenarios_split", "scenario=task_il"],
    "split_domain": ["experiment=three_scenarios_split", "scenario=domain_il"],
    "split_class": ["experiment=three_scenarios_split", "scenario=class_il"],
    "permuted": ["experiment=three_scenarios_permuted"],
}
ACC = {"split_task": "acc_task_il", "split_domain": "acc_domain_il",
       "split_class": "acc_class_il", "permuted": "acc_domain_il"}
# the paper's methods first (rows with a published number), then ours on the same protocol
METHODS = ["finetune", "ewc", "online_ewc", "si", "lwf", "generative_replay", "joint",
           "mas", "imm_mean", "imm_mode", "owm", "eowm", "plwf", "rank_update"]
ONLY = {"rank_update": {"split_task"}}  # task-IL only
# van de Ven & Tolias, "Three scenarios for continual learning" (arXiv 1904.07734 v1),
# the split-MNIST and permuted-MNIST results tables: mean (± SEM) over 20 seeds. The EWC,
# DGR+distill (our generative_replay) rows are checked against a verbatim quote of the v1
# text; the others are as quoted in this README before (not re-checked: the PDF cannot be
# fetched here). None = finetune, Offline = joint.
PUBLISHED = {
    "split_task": {"finetune": (87.19, 0.94), "ewc": (98.64, 0.22), "online_ewc": (99.12, 0.11),
                   "si": (99.09, 0.15), "lwf": (99.57, 0.02), "generative_replay": (99.61, 0.02),
                   "joint": (99.66, 0.02)},
    "split_domain": {"finetune": (59.21, 2.04), "ewc": (63.95, 1.90),
                     "online_ewc": (64.32, 1.90), "si": (65.36, 1.57), "lwf": (71.50, 1.63),
                     "generative_replay": (96.83, 0.20), "joint": (98.42, 0.06)},
    "split_class": {"finetune": (19.90, 0.02), "ewc": (20.01, 0.06), "online_ewc": (19.96, 0.07),
                    "si": (19.99, 0.06), "lwf": (23.85, 0.44), "generative_replay": (91.79, 0.32),
                    "joint": (97.94, 0.03)},
    "permuted": {"finetune": (78.51, None), "ewc": (94.31, None), "online_ewc": (94.42, None),
                 "si": (95.33, None), "lwf": (72.64, None)},
}


def _completed(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if path.is_file() and (summary := json.loads(path.read_text())).get("status") == "completed":
        return summary
    return None


PAPER_SEEDS = 20


def verdict(mean: float, sem: float, pub: tuple[float, float | None] | None) -> str:
    """Within 2 points or the paper's spread (its seeds' std, SEM x sqrt(20)), or our mean's
    two combined SEMs, else OUTSIDE by how far."""
    if pub is None:
        return "–"
    gap = mean - pub[0]
    paper_sem = pub[1] or 0.0
    spread = max(2.0, paper_sem * math.sqrt(PAPER_SEEDS), 2 * math.hypot(sem, paper_sem))
    return f"{gap:+.2f} " + ("within" if abs(gap) <= spread else "OUTSIDE")


def table(protocol: str, rows: dict[str, list[dict]]) -> str:
    lines = [f"{protocol} ({ACC[protocol]}, %)\n",
             "| method | seeds | ACC % (mean ± SEM) | published (± SEM) | ours − published | "
             "train FLOPs |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        runs = rows.get(method)
        if not runs:
            continue
        accs = [100 * r[ACC[protocol]] for r in runs]
        mean = statistics.mean(accs)
        sem = statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else 0.0
        pub = PUBLISHED[protocol].get(method)
        pub_s = "–" if pub is None else (f"{pub[0]:.2f}" + ("" if pub[1] is None
                                                            else f" ± {pub[1]:.2f}"))
        lines.append(f"| {method} | {len(accs)} | {mean:.2f} ± {sem:.2f} | {pub_s} | "
                     f"{verdict(mean, sem, pub)} | "
                     f"{statistics.mean(r['train_flops'] for r in runs):.3e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--out", type=Path, default=Path("outputs/three_scenarios"))
    ap.add_argument("--report-only", action="store_true",
                    help="tabulate the runs already completed under --out; train nothing")
    args = ap.parse_args()
    runs = [(p, m, s) for s in args.seeds for p in args.protocols for m in args.methods
            if p in ONLY.get(m, PROTOCOLS)]
    found: dict[str, dict[str, list[dict]]] = {}
    for p, m, s in runs:
        run_dir = args.out / p / f"{m}_seed{s}"
        summary = _completed(run_dir)
        if summary is None and not args.report_only:
            try:
                summary = run_one([*PROTOCOLS[p], f"method={m}", "eval.every=0",
                                   "logger.console=false", f"seed={s}"], run_dir)
            except Exception:  # one failed cell does not stop the table; it is reported
                print(f"FAILED {p} {m} seed {s}:\n{traceback.format_exc()}", flush=True)
                continue
            print(f"{p} {m} seed {s}: {100 * summary[ACC[p]]:.2f} "
                  f"({summary['train_seconds']:.0f} s)", flush=True)
        if summary is not None:
            found.setdefault(p, {}).setdefault(m, []).append(summary)
    for p in args.protocols:
        if p in found:
            print("\n" + table(p, found[p]) + "\n")


if __name__ == "__main__":
    main()
