"""The run's CSV files (the contract `clbench-compare` reads; see DESIGN.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

ACC_COLUMNS = ["train_task", "eval_task", "accuracy", "acc_class_il", "acc_task_il",
               "acc_domain_il"]
CURVE_COLUMNS = ["step", "train_task", "eval_task", "accuracy", "acc_class_il", "acc_task_il",
                 "acc_domain_il"]
TRAIN_COLUMNS = ["step", "train_task", "loss", "flops_cumulative", "seconds"]
# cumulative training FLOPs by component (budget/flops.py `FlopCounter.component`);
# 0 for a method that tags none of its passes
COMPONENT_COLUMNS = ["flops_generator_train", "flops_replay", "flops_current", "flops_teacher"]
TRAIN_COLUMNS += COMPONENT_COLUMNS


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CSVLogger:
    """Appends rows to acc_matrix.csv, curves.csv and train.csv (flushed per call, so a
    crash never leaves a half row) and writes summary.csv/json atomically."""

    def __init__(self, run_dir: str | Path, keep_through_task: int | None = None):
        """`keep_through_task=k` continues existing files, dropping rows of tasks after k
        (a resumed run); None starts them afresh."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._files = {}
        self._writers = {}
        for name, columns in (("acc_matrix", ACC_COLUMNS), ("curves", CURVE_COLUMNS),
                              ("train", TRAIN_COLUMNS)):
            path = self.run_dir / f"{name}.csv"
            kept = []
            if keep_through_task is not None and path.is_file():
                with open(path, newline="") as f:
                    kept = [r for r in csv.DictReader(f)
                            if r.get("train_task") and int(r["train_task"]) <= keep_through_task]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write(path, buf.getvalue())
            f = open(path, "a", newline="")
            self._files[name] = f
            self._writers[name] = csv.DictWriter(f, columns, restval="", extrasaction="ignore")

    def _write(self, name: str, rows: list[dict]) -> None:
        self._writers[name].writerows(rows)
        self._files[name].flush()

    def log_acc_rows(self, rows: list[dict]) -> None:
        self._write("acc_matrix", rows)

    def log_curve_rows(self, rows: list[dict]) -> None:
        self._write("curves", rows)

    def log_train_rows(self, rows: list[dict]) -> None:
        self._write("train", rows)

    def log_summary(self, summary: dict) -> None:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in summary.items()}
        atomic_write(self.run_dir / "summary.json", json.dumps(clean, indent=2, default=str))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, list(summary))
        writer.writeheader()
        writer.writerow(summary)
        atomic_write(self.run_dir / "summary.csv", buf.getvalue())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
