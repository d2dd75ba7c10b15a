"""Find run directories and read the files a run wrote (DESIGN.md 'Files a run writes')."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every directory under `paths` (single runs and sweeps) that holds a run: a
    summary.json, or Hydra's .hydra/ of a job that died before writing one."""
    dirs = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"clbench-compare: {root} does not exist")
        for marker in ("summary.json", ".hydra/config.yaml"):
            for path in [root / marker, *root.glob(f"**/{marker}")]:
                if path.is_file():
                    dirs.add(path.parent if marker == "summary.json" else path.parent.parent)
    return sorted(dirs)


def load_summaries(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run with a `run_dir` column; runs without a summary get status
    'missing' (they died before writing one)."""
    rows = []
    for run_dir in find_run_dirs(paths):
        path = run_dir / "summary.json"
        row = json.loads(path.read_text()) if path.is_file() else {"status": "missing"}
        rows.append({**row, "run_dir": str(run_dir)})
    if not rows:
        raise FileNotFoundError(f"clbench-compare: no runs found under {[str(p) for p in paths]}")
    return pd.DataFrame(rows)


def read_acc_matrix(run_dir: str | Path, column: str = "accuracy") -> pd.DataFrame:
    """The accuracy matrix as a square frame: rows = after task, columns = task."""
    acc = pd.read_csv(Path(run_dir) / "acc_matrix.csv")
    return acc.pivot(index="train_task", columns="eval_task", values=column)


def read_curves(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "curves.csv")
