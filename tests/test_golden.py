"""No result changes: the accuracy matrices of 16 reference runs (deterministic, CPU, seed 0,
one torch thread) equal the ones stored in tests/golden/<name>.csv with the torch version
they came from. Store them before a change that must not move a result, compare after:

    CLBENCH_DATA=/path/to/data CLBENCH_GOLDEN_WRITE=1 pytest -m slow tests/test_golden.py
    CLBENCH_DATA=/path/to/data pytest -m slow tests/test_golden.py
"""

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from cl_bench.study import run_in
from conftest import needs_mnist

GOLDEN = Path(__file__).resolve().parent / "golden"
# one torch thread: a matrix multiply's summation order may depend on the thread count
COMMON = ["deterministic=true", "seed=0", "logger.console=false", "device=cpu",
          "eval.plot=false", "threads=1"]
RUNS = {
    "seq_mnist_er": ["experiment=seq_mnist_er"],
    "seq_mnist_derpp": ["experiment=seq_mnist_derpp"],
    "gr_mnist_200": ["experiment=gr_mnist", "budget.iters=200"],
    "sgm_split_mnist_300": ["benchmark=split_mnist", "method=sgm", "budget.iters=300"],
    "icarl_digits": ["method=icarl"],
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


def _matrix(name: str, out: Path) -> pd.DataFrame:
    run_in([*COMMON, *RUNS[name]], out / name)
    return pd.read_csv(out / name / "acc_matrix.csv")


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("name", list(RUNS))
def test_accuracy_matrix_is_unchanged(name, tmp_path):
    path = GOLDEN / f"{name}.csv"
    if os.environ.get("CLBENCH_GOLDEN_WRITE") == "1":
        text = _matrix(name, tmp_path).to_csv(index=False)
        path.write_text(f"# torch {torch.__version__}\n{text}")
        pytest.skip(f"stored {path}")
    stored_torch = path.read_text().splitlines()[0].removeprefix("# torch ")
    if stored_torch != torch.__version__:
        pytest.skip(f"stored with torch {stored_torch}, running {torch.__version__}")
    stored, fresh = pd.read_csv(path, comment="#"), _matrix(name, tmp_path)
    assert list(stored.columns) == list(fresh.columns)
    both_empty = stored.isna() & fresh.isna()  # e.g. acc_domain_il of a split benchmark
    diff = (stored - fresh).abs().where(~both_empty, 0.0).fillna(float("inf"))
    assert float(diff.to_numpy().max()) == 0.0
