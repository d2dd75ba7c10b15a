import csv

import pandas as pd
import pytest

from cl_bench.loggers import csv_logger
from cl_bench.loggers.csv_logger import ACC_COLUMNS, TRAIN_COLUMNS, CSVLogger


def _row(step, task, **extra):
    return {"step": step, "train_task": task, "loss": 0.5, "flops_cumulative": 100 * step,
            "seconds": 0.1 * step, **extra}


def _lines(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _assert_whole(path):
    header, *rows = _lines(path)
    assert all(len(r) == len(header) for r in rows)
    return header


def test_new_columns_mid_run_widen_the_header(tmp_path):
    log = CSVLogger(tmp_path)
    log.log_train_rows([_row(10, 0, flops_current=90)])
    log.log_train_rows([_row(20, 0, flops_current=180, loss_ce=0.4)])
    log.log_train_rows([_row(30, 1, flops_current=250, flops_replay=30, loss_ce=0.3,
                             loss_replay=0.2)])
    log.log_train_rows([_row(40, 1, flops_current=320, flops_replay=60, loss_ce=0.3,
                             loss_replay=0.1)])
    log.close()
    header = _assert_whole(tmp_path / "train.csv")
    assert header == TRAIN_COLUMNS + ["flops_current", "loss_ce", "flops_replay", "loss_replay"]
    train = pd.read_csv(tmp_path / "train.csv")
    assert train.step.tolist() == [10, 20, 30, 40]
    assert train.flops_replay.tolist() == [0, 0, 30, 60]  # cumulative FLOPs: 0 before
    assert train.loss_ce.isna().tolist() == [True, False, False, False]  # losses: empty
    assert train.loss_replay.isna().sum() == 2
    assert _lines(tmp_path / "acc_matrix.csv") == [ACC_COLUMNS]


def test_rows_in_one_call_may_bring_different_keys(tmp_path):
    log = CSVLogger(tmp_path)
    log.log_train_rows([_row(10, 0), _row(20, 0, loss_kd=1.0), _row(30, 0)])
    log.close()
    train = pd.read_csv(tmp_path / "train.csv")
    assert train.loss_kd.isna().tolist() == [True, False, True]


def test_resume_keeps_the_extra_columns(tmp_path):
    log = CSVLogger(tmp_path)
    log.log_train_rows([_row(10, 0, flops_current=90, loss_ce=0.4)])
    log.log_train_rows([_row(20, 1, flops_current=180, flops_teacher=5, loss_ce=0.3)])
    log.log_acc_rows([{"train_task": 0, "eval_task": 0, "accuracy": 0.9},
                      {"train_task": 1, "eval_task": 0, "accuracy": 0.8}])
    log.close()

    resumed = CSVLogger(tmp_path, keep_through_task=0)
    header = _assert_whole(tmp_path / "train.csv")
    assert header == TRAIN_COLUMNS + ["flops_current", "loss_ce", "flops_teacher"]
    resumed.log_train_rows([_row(20, 1, flops_current=180, flops_teacher=5, loss_ce=0.3)])
    resumed.log_train_rows([_row(30, 1, flops_current=270, flops_teacher=9, loss_ce=0.2,
                                 flops_dense_cumulative=3000)])
    resumed.close()
    _assert_whole(tmp_path / "train.csv")
    train = pd.read_csv(tmp_path / "train.csv")
    assert train.step.tolist() == [10, 20, 30]
    assert train.flops_teacher.tolist() == [0, 5, 9]
    assert train.loss_ce.tolist() == [0.4, 0.3, 0.2]
    assert train.flops_dense_cumulative.tolist() == [0, 0, 3000]
    assert pd.read_csv(tmp_path / "acc_matrix.csv").train_task.tolist() == [0]


def test_no_half_rows(tmp_path, monkeypatch):
    log = CSVLogger(tmp_path)
    for step in range(1, 6):
        log.log_train_rows([_row(step, 0, **{f"loss_{step}": 1.0})])
        _assert_whole(tmp_path / "train.csv")  # readable whole after every call

    def crash(path, text):
        raise OSError("disk full")

    before = (tmp_path / "train.csv").read_text()
    monkeypatch.setattr(csv_logger, "atomic_write", crash)
    with pytest.raises(OSError):
        log.log_train_rows([_row(6, 0, loss_new=1.0)])
    assert (tmp_path / "train.csv").read_text() == before  # a failed widening changes nothing
    log.close()
    monkeypatch.undo()

    with open(tmp_path / "train.csv", "a") as f:
        f.write("7,0,0.5")  # a crash in the middle of a row
    CSVLogger(tmp_path, keep_through_task=0).close()
    assert pd.read_csv(tmp_path / "train.csv").step.tolist() == [1, 2, 3, 4, 5]
