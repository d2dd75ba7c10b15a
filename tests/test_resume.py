"""Run identity, skip_done and resuming an interrupted run."""

import signal
import subprocess
import sys
import time

import pandas as pd

CLI = [sys.executable, "-m", "cl_bench.cli"]
# ~1 s per task on 2 cores, so a signal lands mid-task; deterministic for the comparison
LONG = ["budget.epochs=null", "budget.iters=1500", "eval.every=300", "deterministic=true",
        "logger.console=false", "method=er", "memory.size=100"]


def _clbench(args, cwd):
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=600)


def _run_dirs(root):
    return sorted(p.parent.parent for p in root.glob("**/.hydra/config.yaml"))


def test_same_multirun_twice_with_skip_trains_nothing_the_second_time(tmp_path):
    args = ["-m", "seed=0,1", "budget.iters=5", "eval.every=0", "logger.console=false",
            "skip_done=true", f"output_root={tmp_path / 'out'}"]
    assert _clbench(args, tmp_path).returncode == 0
    first = {d: (d / "summary.json").stat().st_mtime_ns for d in _run_dirs(tmp_path / "out")}
    assert len(first) == 2
    again = _clbench(args, tmp_path)
    assert again.returncode == 0, again.stderr
    second = {d: (d / "summary.json").stat().st_mtime_ns for d in _run_dirs(tmp_path / "out")}
    assert second == first  # no new run directory, no summary rewritten


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference = _clbench(LONG + [f"output_root={tmp_path / 'ref'}"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    [ref_dir] = _run_dirs(tmp_path / "ref")

    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + LONG + [f"output_root={out}", "skip_done=true"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(out.glob("runs/*/*/checkpoint.pt")):  # task 0 done and checkpointed
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.4)  # into task 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    [run_dir] = _run_dirs(out)
    assert pd.read_json(run_dir / "summary.json", typ="series")["status"] == "interrupted"

    resumed = _clbench(LONG + [f"output_root={out}", "skip_done=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _run_dirs(out) == [run_dir]  # continued in place, no second directory
    summary = pd.read_json(run_dir / "summary.json", typ="series")
    assert summary["status"] == "completed" and summary["resumed_after_task"] >= 0
    ref_acc = pd.read_csv(ref_dir / "acc_matrix.csv")
    acc = pd.read_csv(run_dir / "acc_matrix.csv")
    pd.testing.assert_frame_equal(acc, ref_acc)
    ref_train = pd.read_csv(ref_dir / "train.csv")
    train = pd.read_csv(run_dir / "train.csv")
    assert train.step.tolist() == ref_train.step.tolist()  # no duplicated or lost rows
    assert train.flops_cumulative.tolist() == ref_train.flops_cumulative.tolist()
