"""The run's CSV files (the contract `clbench-compare` reads; see DESIGN.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from cl_bench.errors import writing

ACC_COLUMNS = ["train_task", "eval_task", "accuracy", "acc_class_il", "acc_task_il",
               "acc_domain_il"]
CURVE_COLUMNS = ["step", "train_task", "eval_task", "accuracy", "acc_class_il", "acc_task_il",
                 "acc_domain_il"]
TRAIN_COLUMNS = ["step", "train_task", "loss", "flops_cumulative", "seconds"]
# A column first seen mid-run is 0 in the rows written before it when it names a cumulative
# FLOP count (a component's FLOPs before its first tagged pass are 0) and empty otherwise
# (a loss term not computed then).
ZERO_FILLED_PREFIX = "flops_"


def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to a temporary file and renames it over `path`; a failed write (a
    full disk) leaves `path` as it was and no temporary behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, len(text.encode())):
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_summary(run_dir: str | Path, summary: dict) -> None:
    """summary.json and summary.csv, atomically. When the disk is full, summary.json is
    overwritten in place instead: the run writes it once at its start, so the blocks of
    that first version are still there to reuse and the status survives."""
    run_dir = Path(run_dir)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in summary.items()}
    text = json.dumps(clean, indent=2, default=str)
    path = run_dir / "summary.json"
    try:
        atomic_write(path, text)
    except OSError:
        if not path.is_file():
            raise
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(summary))
    writer.writeheader()
    writer.writerow(summary)
    atomic_write(run_dir / "summary.csv", buf.getvalue())


def _read(path: Path) -> tuple[list[str], list[dict]]:
    """Header and whole rows of a CSV file (a row missing fields is a half row: dropped)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if None not in r.values() and None not in r]
        return list(reader.fieldnames or []), rows


class CSVLogger:
    """Appends rows to acc_matrix.csv, curves.csv and train.csv (flushed per call, so a
    crash never leaves a half row) and writes summary.csv/json atomically.

    acc_matrix.csv and curves.csv have fixed columns. train.csv starts with `TRAIN_COLUMNS`
    followed by every further key the rows bring (`flops_<component>`,
    `flops_dense_cumulative`, `loss_<term>`, ...) in order of first appearance; a new key
    rewrites the file atomically with the wider header (see `ZERO_FILLED_PREFIX` for the
    earlier rows' cells), which happens a handful of times per run."""

    def __init__(self, run_dir: str | Path, keep_through_task: int | None = None,
                 keep_through_step: int | None = None):
        """`keep_through_task=k` continues existing files, dropping rows of tasks after k
        (a resumed run) and keeping train.csv's columns; None starts them afresh.
        `keep_through_step=s` also keeps task k+1's rows up to step s (a run resumed inside
        that task)."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._files = {}
        self._writers = {}
        self._columns = {}
        for name, columns in (("acc_matrix", ACC_COLUMNS), ("curves", CURVE_COLUMNS),
                              ("train", TRAIN_COLUMNS)):
            path = self.run_dir / f"{name}.csv"
            kept = []
            if keep_through_task is not None and path.is_file():
                header, rows = _read(path)
                kept = [r for r in rows if r.get("train_task") and (
                    int(r["train_task"]) <= keep_through_task
                    or (keep_through_step is not None and r.get("step")
                        and int(r["train_task"]) == keep_through_task + 1
                        and int(r["step"]) <= keep_through_step))]
                if name == "train":
                    columns = columns + [c for c in header if c not in columns]
            self._start(name, list(columns), kept)

    def _start(self, name: str, columns: list[str], rows: list[dict]) -> None:
        """(Re)writes `name`.csv atomically with `columns` and `rows`, then appends to it."""
        if name in self._files:
            self._files[name].close()
        path = self.run_dir / f"{name}.csv"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, buf.getvalue())
        f = open(path, "a", newline="")
        self._files[name] = f
        self._writers[name] = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
        self._columns[name] = columns

    def _write(self, name: str, rows: list[dict]) -> None:
        def size() -> int:  # asked only when the disk is full
            buf = io.StringIO()
            csv.DictWriter(buf, self._columns[name], restval="", extrasaction="ignore"
                           ).writerows(rows)
            return len(buf.getvalue().encode())

        with writing(self.run_dir / f"{name}.csv", size):
            self._writers[name].writerows(rows)
            self._files[name].flush()

    def log_acc_rows(self, rows: list[dict]) -> None:
        self._write("acc_matrix", rows)

    def log_curve_rows(self, rows: list[dict]) -> None:
        self._write("curves", rows)

    def log_train_rows(self, rows: list[dict]) -> None:
        """Appends `rows`; a key not yet in the header widens it first (the file is rewritten
        atomically together with these rows, so it never holds a half row)."""
        columns = self._columns["train"]
        new = []
        for row in rows:
            new += [k for k in row if k not in columns and k not in new]
        if not new:
            self._write("train", rows)
            return
        fill = {k: 0 if k.startswith(ZERO_FILLED_PREFIX) else "" for k in new}
        self._files["train"].flush()
        _, earlier = _read(self.run_dir / "train.csv")
        self._start("train", columns + new, [{**fill, **row} for row in [*earlier, *rows]])

    def log_summary(self, summary: dict) -> None:
        write_summary(self.run_dir, summary)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
