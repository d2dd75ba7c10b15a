"""Every method preset on every main benchmark at its defaults: each run completes with a
finite loss, or is refused at build with a message naming the fix (README "Method presets").
Prints one line per cell, the counts, and with `--versus`, which presets beat fine-tuning.

    CLBENCH_DATA=../shared/data python scripts/preset_matrix.py --iters 30
    CLBENCH_DATA=../shared/data python scripts/preset_matrix.py --benchmarks split_mnist \
        --iters 0 --seeds 0 1 2 --versus finetune

`--iters` caps each task's steps (0: the defaults, one epoch per task). With `--versus`, a
preset refused with a scenario as its fix (`run it with scenario=task_il`) is run again in
that scenario, and compared with the reference method run in the same scenario. Exits 1 when
a cell diverged or crashed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from cl_bench.cli import CONF_DIR  # registers the schemas and resolvers
from cl_bench.errors import user_error
from cl_bench.experiment import run_experiment

METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))
# the four: the offline digits, split and permuted MNIST, split CIFAR-100 (images)
BENCHMARKS = ["digits", "split_mnist", "permuted_mnist", "split_cifar100"]
SCENARIO_FIX = re.compile(r"run (?:it|them) with (scenario=\w+)")


def cell(overrides: list[str], run_dir: Path) -> tuple[str, str, dict | None]:
    """("completed" | "refused" | "diverged" | "crashed", detail, summary)."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, "eval.every=0",
                                               "logger.console=false"])
        summary = run_experiment(cfg, run_dir)
    except FloatingPointError as err:
        return "diverged", str(err), None
    except Exception as err:  # noqa: BLE001 - reported per cell
        if (known := user_error(err)) is not None:
            return "refused", str(known).splitlines()[0], None
        return "crashed", f"{type(err).__name__}: {err}".splitlines()[0], None
    acc = summary[f"acc_{summary['scenario']}"]
    return "completed", f"{summary['scenario']} acc {100 * acc:.1f}", summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--benchmarks", nargs="+", default=BENCHMARKS)
    ap.add_argument("--iters", type=int, default=30, help="steps per task (0: the defaults)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--versus", help="a method preset each other one is compared with")
    ap.add_argument("--scenario", help="run every cell in this scenario (default: the "
                    "benchmark's)")
    args = ap.parse_args()
    extra = [f"budget.iters={args.iters}"] if args.iters else []
    extra += [f"scenario={args.scenario}"] if args.scenario else []
    methods = ([args.versus] if args.versus else []) + [m for m in args.methods
                                                        if m != args.versus]
    counts: dict[str, int] = {}
    acc: dict[tuple[str, str, str], list[float]] = {}  # (benchmark, method, scenario)
    rerun: set[tuple] = set()  # (benchmark, method, seed, scenario fix) run in that scenario
    with tempfile.TemporaryDirectory() as tmp:
        for benchmark in args.benchmarks:
            for method in methods:
                for seed in args.seeds:
                    overrides = [f"method={method}", f"benchmark={benchmark}", f"seed={seed}",
                                 *extra]
                    t0 = time.perf_counter()
                    run_dir = Path(tmp) / f"{benchmark}_{method}_{seed}"
                    kind, detail, summary = cell(overrides, run_dir)
                    if args.versus and kind == "refused" and (
                            fix := SCENARIO_FIX.search(detail)):
                        for m in [args.versus, method]:
                            if (benchmark, m, seed, fix[1]) in rerun:
                                continue
                            rerun.add((benchmark, m, seed, fix[1]))
                            kind, detail, summary = cell(
                                [*overrides[1:], f"method={m}", fix[1]],
                                Path(tmp) / f"{benchmark}_{m}_{seed}_{fix[1]}")
                            if summary is not None:
                                acc.setdefault((benchmark, m, summary["scenario"]), []).append(
                                    100 * summary[f"acc_{summary['scenario']}"])
                        detail = f"{detail} ({fix[1]})"
                    elif summary is not None:
                        acc.setdefault((benchmark, method, summary["scenario"]), []).append(
                            100 * summary[f"acc_{summary['scenario']}"])
                    counts[kind] = counts.get(kind, 0) + 1
                    print(f"{benchmark:15s} {method:18s} {seed} {kind:9s} "
                          f"{time.perf_counter() - t0:6.1f} s  {detail[:200]}", flush=True)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if args.versus:
        print(f"\n| benchmark | method | scenario | seeds | ACC % | {args.versus} % | beats |")
        print("|---|---|---|---|---|---|---|")
        for (benchmark, method, scenario), accs in sorted(acc.items()):
            ref = acc.get((benchmark, args.versus, scenario))
            if method == args.versus or not ref:
                continue
            mean, ref_mean = statistics.mean(accs), statistics.mean(ref)
            print(f"| {benchmark} | {method} | {scenario} | {len(accs)} | {mean:.2f} | "
                  f"{ref_mean:.2f} | {'yes' if mean > ref_mean else 'NO'} |")
    return 1 if counts.get("diverged") or counts.get("crashed") else 0


if __name__ == "__main__":
    sys.exit(main())
