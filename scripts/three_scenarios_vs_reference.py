"""Split MNIST on the three-scenarios protocol, clbench next to van de Ven's own code
(GMvandeVen/continual-learning, a checkout given by --reference) on the same seeds and the
same digits-to-tasks assignment (the reference's per-seed draw,
`clbench_three_scenarios_order`), seed by seed.

    CLBENCH_DATA=../shared/data python scripts/three_scenarios_vs_reference.py \
        --reference ~/src/continual-learning --scenario task --method finetune --seeds 2 3 4

The reference runs as `main.py --experiment=splitMNIST --scenario=<s> --seed=<n>` plus the
method's flags (METHODS), reading MNIST from CLBENCH_DATA through a temporary folder laid
out as it expects; its final average accuracy is parsed from its output. Each pair's results
go to --out (a pair already there is reused), then a table: per seed, both accuracies and the
difference, and the mean difference with its SEM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cl_bench.study import run_in

# clbench method -> the reference's flags (its compare.py names); the reference's current code
# has the 2022 values, so clbench runs experiment=three_scenarios_split_2022
METHODS = {"finetune": [], "ewc": ["--ewc"], "si": ["--si"], "lwf": ["--lwf"],
           "joint": ["--joint"]}
SCENARIOS = {"task": "task_il", "domain": "domain_il", "class": "class_il"}
AVERAGE = re.compile(r"average accuracy over all \d+ contexts: ([0-9.]+)")


def reference_run(checkout: Path, data: Path, scenario: str, method: str, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "MNIST").symlink_to(data.resolve())
        out = subprocess.run(
            [sys.executable, "main.py", "--experiment=splitMNIST", f"--scenario={scenario}",
             f"--seed={seed}", f"--data-dir={tmp}", "--no-save", f"--results-dir={tmp}",
             *METHODS[method]],
            cwd=checkout, capture_output=True, text=True, check=True,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    found = AVERAGE.findall(out.stdout.replace("\r", "\n"))
    if not found:
        raise RuntimeError(f"no final accuracy in the reference's output:\n{out.stdout[-2000:]}")
    return 100 * float(found[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True,
                    help="a checkout of GMvandeVen/continual-learning")
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="task")
    ap.add_argument("--method", choices=list(METHODS), default="finetune")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])  # all_results.sh: 2..21
    ap.add_argument("--out", type=Path, default=Path("outputs/three_scenarios_vs_reference"))
    args = ap.parse_args()
    data = Path(os.environ.get("CLBENCH_DATA", "../shared/data"))
    rows = []
    for seed in args.seeds:
        run_dir = args.out / f"{args.scenario}_{args.method}_seed{seed}"
        ref_file = run_dir / "reference.json"
        if ref_file.is_file():
            ref = json.loads(ref_file.read_text())["accuracy"]
        else:
            ref = reference_run(args.reference, data, args.scenario, args.method, seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(json.dumps({"accuracy": ref}))
        ours = run_in(["experiment=three_scenarios_split_2022",
                        f"scenario={SCENARIOS[args.scenario]}", f"method={args.method}",
                        f"seed={seed}", "benchmark.shuffle_classes=false",
                        "benchmark.class_order='${clbench_three_scenarios_order:${seed},10}'",
                        "eval.every=0", "logger.console=false"], run_dir / "clbench")
        rows.append((seed, ref, 100 * ours[f"acc_{SCENARIOS[args.scenario]}"]))
        print(f"seed {seed}: reference {ref:.2f}, clbench {rows[-1][2]:.2f}", flush=True)
    print(f"\nsplit MNIST {args.scenario}-IL, {args.method}\n")
    print("| seed | reference % | clbench % | clbench − reference |\n|---|---|---|---|")
    for seed, ref, ours in rows:
        print(f"| {seed} | {ref:.2f} | {ours:.2f} | {ours - ref:+.2f} |")
    diffs = [o - r for _, r, o in rows]
    refs, ours_ = [r for _, r, _ in rows], [o for _, _, o in rows]
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    print(f"| mean | {statistics.mean(refs):.2f} | {statistics.mean(ours_):.2f} | "
          f"{statistics.mean(diffs):+.2f} ± {sem:.2f} (SEM) |")


if __name__ == "__main__":
    main()
