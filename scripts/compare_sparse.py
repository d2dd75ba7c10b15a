"""Sparse and efficient training against dense replay at the same steps: class-IL accuracy
(mean +/- std over seeds), theoretical and as-executed training FLOPs, their ratio to dense
DER++, and the accuracy-vs-training-FLOPs plot (`clbench-compare --plot`).

    CLBENCH_DATA=../shared/data python scripts/compare_sparse.py mnist --jobs 2
    CLBENCH_DATA=../shared/data python scripts/compare_sparse.py cifar100 --jobs 2

`mnist`: split MNIST, the DER paper's seq-MNIST protocol (MLP 784-100-100-10, SGD, batch 10
+ 10 replayed, 1 epoch per task, reservoir of 500; `experiment=seq_mnist_er/derpp`).
`cifar100`: split CIFAR-100 (10 tasks), `resnet18_reduced` (nf 20), SGD 0.03, batch 32 + 32
replayed, `--epochs` per task (default 1), reservoir of 500: a CPU-sized budget. Sparse rows
run at 90% sparsity. Runs completed under `--out` are reused; per-run numbers go to
`--out`/results.json and the plot to `--out`/acc_vs_flops.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _pool import mean_sd, run_rows

SPARSE = ["plugins.sparsity.density=0.1"]
RIGL = ["plugin=[sparsity]", "plugins.sparsity.update=rigl", *SPARSE]
FREEZE_SIEVE = ["plugin=[freeze,sieve]"]


def methods(er: list[str], derpp: list[str]) -> dict[str, list[str]]:
    return {
        "er": er,
        "derpp": derpp,
        "sparcl": [*derpp, "method=sparcl"],
        "sparcl_logit_mask": [*derpp, "method=sparcl",
                              "plugin=[sparsity,gradient_mask,data_removal,task_logit_mask]"],
        "sparcl_er": [*er, "method=sparcl_er"],
        "rigl_er": [*er, *RIGL],
        "static_er": [*er, "plugin=[sparsity]", *SPARSE],
        "er_freeze_sieve": [*er, *FREEZE_SIEVE],
    }


CIFAR = ["benchmark=split_cifar100", "model=resnet18_reduced", "optimizer=sgd",
         "optimizer.lr=0.03", "budget.batch_size=32", "method.replay_batch_size=32",
         "memory=reservoir", "memory.size=500"]
PROTOCOLS = {
    "mnist": methods(["experiment=seq_mnist_er"], ["experiment=seq_mnist_derpp"]),
    "cifar100": methods([*CIFAR, "method=er"], [*CIFAR, "method=derpp"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", choices=list(PROTOCOLS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="subset of the methods (default: all)")
    ap.add_argument("--epochs", type=int, default=1, help="cifar100: epochs per task")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default outputs/compare_sparse_<benchmark>")
    args = ap.parse_args()
    proto = PROTOCOLS[args.benchmark]
    names = args.methods or list(proto)
    if unknown := set(names) - set(proto):
        ap.error(f"--methods {sorted(unknown)}: choose from {list(proto)}")
    out = args.out or Path(f"outputs/compare_sparse_{args.benchmark}")
    extra = ["eval.every=0", "logger.console=false"]
    if args.benchmark == "cifar100":
        extra.append(f"budget.epochs={args.epochs}")
    found = run_rows({name: proto[name] for name in names}, extra, args.seeds, out, args.jobs)
    results = {name: [{"seed": seed, "acc": s["acc_class_il"], "train": s["train_flops"],
                       "executed": s["train_flops_dense"], "steps": s["steps"],
                       "seconds": s["train_seconds"]} for seed, s in runs]
               for name, runs in found.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    ref = results.get("derpp")
    ref_acc = statistics.mean(100 * r["acc"] for r in ref) if ref else float("nan")
    ref_flops = statistics.mean(r["train"] for r in ref) if ref else float("nan")
    print(f"split {args.benchmark} class-IL, {' '.join(extra)}, seeds {args.seeds}\n")
    print("| method | class-IL ACC % (mean ± std) | Δ vs DER++ | training FLOPs theoretical"
          " | as executed | DER++ / theoretical | steps | train time |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        accs = [100 * r["acc"] for r in rows]
        flops = statistics.mean(r["train"] for r in rows)
        print(f"| {name} | {mean_sd(accs)} | {statistics.mean(accs) - ref_acc:+.2f} | "
              f"{flops:.3e} | {statistics.mean(r['executed'] for r in rows):.3e} | "
              f"{ref_flops / flops:.1f}x | {statistics.mean(r['steps'] for r in rows):.0f} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} s |")
    plot = subprocess.run([sys.executable, "-m", "cl_bench.report.compare", str(out),
                           "--by", "logger.group", "--format", "csv", "--plot", "--out", str(out)],
                          capture_output=True, text=True, check=False)
    print(f"\n{out / 'acc_vs_flops.png'}" if plot.returncode == 0 else plot.stderr)


if __name__ == "__main__":
    main()
