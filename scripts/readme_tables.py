"""Regenerates the README's result tables from the commands that produce them.

Each table sits between `<!-- table NAME -->` and `<!-- /table -->` in README.md; the
commands below print it (the markdown rows of their output, the header taken once), and
this script writes their rows in place. The experiment scripts reuse runs already completed
under their `--out` folders, so a second call only re-tabulates; the timing tables are
measured again on every call (run them on an idle machine).

    CLBENCH_DATA=../shared/data python scripts/readme_tables.py              # every table
    CLBENCH_DATA=../shared/data python scripts/readme_tables.py --only seq-mnist speed
    python scripts/readme_tables.py --list                                    # names, commands
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = [sys.executable]


def script(name: str, *args: str) -> list[str]:
    return [*PY, str(REPO / "scripts" / name), *args]


SEQ_500 = ["finetune", "er", "der", "derpp", "er_ace", "agem", "icarl", "gdumb", "gcr"]
# name -> the commands whose markdown rows make the table ({jobs}, {tmp} are filled in)
TABLES: dict[str, list[list[str]]] = {
    "compare-example": [
        ["clbench", "-m", "method=finetune,er,joint", "seed=0,1,2", "budget.epochs=3",
         "logger.console=false", "hydra.sweep.dir={tmp}/example"],
        ["clbench-compare", "{tmp}/example", "--format", "md", "--out", "{tmp}/tables",
         "--metrics", "acc_class_il,forgetting_class_il,acc_task_il,train_flops"],
        ["cat", "{tmp}/tables/compare.md"],
    ],
    "seq-mnist": [script("seq_mnist_table.py", "--methods", *SEQ_500, "--buffer", "500"),
                  script("seq_mnist_table.py", "--methods", "er", "der", "derpp", "gcr",
                         "--buffer", "200")],
    "stability-gap": [script("stability_gap_table.py", "--jobs", "{jobs}", "--out",
                             "outputs/stability_gap_table")],
    "eval-overhead": [script("bench_eval_overhead.py", "--every", "1", "50", "--probe-size",
                             "1000", "--repeats", "3", "--precision", "fp32", "auto")],
    "replay-mnist": [script("compare_replay.py", "mnist", "--jobs", "{jobs}")],
    "replay-cifar100": [script("compare_replay.py", "cifar100", "--jobs", "{jobs}")],
    "plr-split": [script("plr_split_table.py")],
    "sparse-mnist": [script("compare_sparse.py", "mnist", "--jobs", "{jobs}")],
    "sparse-cifar100": [script("compare_sparse.py", "cifar100", "--seeds", "0", "--methods",
                               "er", "derpp", "sparcl", "rigl_er", "er_freeze_sieve",
                               "--jobs", "{jobs}")],
    "regularisation-split": [script("regularisation_table.py", "--protocols", "split_task",
                                    "--jobs", "{jobs}")],
    "regularisation-permuted": [script("regularisation_table.py", "--protocols",
                                       "perm_domain", "--jobs", "{jobs}")],
    "speed": [script("bench_overhead.py", "--repeats", "5", "--threads", "1"),
              script("bench_process.py", "--repeats", "5")],
}


def rows_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("|")]


def build(name: str, jobs: int, tmp: Path) -> list[str]:
    table: list[str] = []
    for command in TABLES[name]:
        cmd = [a.format(jobs=jobs, tmp=tmp) for a in command]
        cmd[0] = shutil.which(cmd[0]) or cmd[0]
        print(f"[{name}] {' '.join(command)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"[{name}] failed ({done.returncode}):\n{done.stderr[-3000:]}")
        rows = rows_of(done.stdout)
        if len(rows) < 3:
            sys.exit(f"[{name}] {' '.join(command)} printed no markdown table; README.md left "
                     f"as it was. Its output ended:\n{done.stdout[-2000:]}")
        table += rows if not table else rows[2:]  # the header once
    return table


def replace(readme: str, name: str, table: list[str]) -> str:
    pattern = re.compile(rf"(<!-- table {re.escape(name)} -->\n).*?(<!-- /table -->)", re.S)
    if not pattern.search(readme):
        sys.exit(f"README.md has no '<!-- table {name} -->' ... '<!-- /table -->' block")
    return pattern.sub(lambda m: m.group(1) + "\n".join(table) + "\n" + m.group(2), readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(TABLES), default=list(TABLES))
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time in the experiment scripts")
    ap.add_argument("--list", action="store_true", help="print the tables and their commands")
    args = ap.parse_args()
    if args.list:
        for name, commands in TABLES.items():
            print(name)
            for c in commands:
                print("   ", " ".join(Path(a).name if a.endswith(".py") or a == sys.executable
                                      else a for a in c))
        return
    os.environ.setdefault("PYTHONPATH", str(REPO / "scripts"))
    with tempfile.TemporaryDirectory(prefix="readme_tables_") as tmp:
        for name in args.only:
            table = build(name, args.jobs, Path(tmp))
            path = REPO / "README.md"
            path.write_text(replace(path.read_text(), name, table))
            print(f"[{name}] {len(table) - 2} rows written to README.md", file=sys.stderr)


if __name__ == "__main__":
    main()
