"""Stores, or checks, the accuracy matrices of a few reference runs, so a refactor of the
runner or the methods can be shown to change no result (same torch version, CPU,
`deterministic=true`, seed 0).

    CLBENCH_DATA=/path/to/data python scripts/golden_matrices.py --write   # before a change
    CLBENCH_DATA=/path/to/data python scripts/golden_matrices.py           # after: compare

The stored matrices live in tests/golden/<name>.csv with the torch version they came from;
`tests/test_golden.py` runs the same comparison (marked slow).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cl_bench.study import run_in  # noqa: E402

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
# one torch thread: a matrix multiply's summation order may depend on the thread count
COMMON = ["deterministic=true", "seed=0", "logger.console=false", "device=cpu",
          "eval.plot=false", "threads=1"]
RUNS = {
    "seq_mnist_er": ["experiment=seq_mnist_er"],
    "seq_mnist_derpp": ["experiment=seq_mnist_derpp"],
    "gr_mnist_200": ["experiment=gr_mnist", "budget.iters=200"],
    "sgm_split_mnist_300": ["benchmark=split_mnist", "method=sgm", "budget.iters=300"],
    "icarl_digits": ["method=icarl"],
    # beyond the five: one short run per method on the offline digits
    **{f"{m}_digits": [f"method={m}"] for m in
       ("agem", "der", "er_ace", "gcr", "gdumb", "joint", "incremental_joint")},
    # stored before plr's generator took its authors' extra layer by default (issue 27)
    "plr_digits": ["method=plr", "method.generator_extra_layer=false", "budget.iters=60",
                   "budget.batch_size=32"],
    "internal_replay_digits": ["method=internal_replay", "method.replay_level=1",
                               "budget.iters=60", "budget.batch_size=32"],
    "er_nmc_digits": ["method=er", "model.head=nmc"],
    "sgm_digits": ["method=sgm"],
}


def matrix(name: str, out: Path) -> pd.DataFrame:
    run_in([*COMMON, *RUNS[name]], out / name)
    return pd.read_csv(out / name / "acc_matrix.csv")


def compare(name: str, out: Path) -> float:
    """Largest absolute difference between the stored and a fresh matrix of `name`."""
    stored = pd.read_csv(GOLDEN / f"{name}.csv", comment="#")
    fresh = matrix(name, out)
    assert list(stored.columns) == list(fresh.columns), (name, stored.columns, fresh.columns)
    diff = (stored - fresh).abs()
    both_empty = stored.isna() & fresh.isna()  # e.g. acc_domain_il of a split benchmark
    return float(diff.where(~both_empty, 0.0).fillna(float("inf")).to_numpy().max())


def stored_torch(name: str) -> str:
    return (GOLDEN / f"{name}.csv").read_text().splitlines()[0].removeprefix("# torch ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the matrices")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            if args.write:
                GOLDEN.mkdir(parents=True, exist_ok=True)
                text = matrix(name, Path(tmp)).to_csv(index=False)
                (GOLDEN / f"{name}.csv").write_text(f"# torch {torch.__version__}\n{text}")
                print(f"{name}: written")
            else:
                print(f"{name}: max |diff| = {compare(name, Path(tmp)):.3g} "
                      f"(stored with torch {stored_torch(name)}, now {torch.__version__})")


if __name__ == "__main__":
    main()
