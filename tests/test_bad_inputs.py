"""Bad input and faults, through the `clbench` command itself (its `main`, in-process: a
subprocess per case would cost seconds of imports each).

Every case exits non-zero with one short message that names the key or the file, shows
no traceback (HYDRA_FULL_ERROR unset), and, where a run directory was made, leaves a
summary.json whose status and error say why and an error.txt.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_bench import checkpoint
from cl_bench.cli import main
from cl_bench.methods.base import Method
from conftest import clbench

TINY = ["budget.iters=3", "eval.every=0", "logger.console=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Data roots, one per fault: <root>/<case>/MNIST/mnist.npz (8x8 images, 10 classes),
    torchvision-layout MNIST IDX files with one truncated, a tiny CIFAR100 archive."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)

    def npz(case, train_y=None, raw=None, folder="MNIST", n_classes=10, shape=(8, 8)):
        d = root / case / folder
        d.mkdir(parents=True)
        path = d / f"{folder.lower()}.npz"
        if raw is not None:
            path.write_bytes(raw)
            return path
        y = np.arange(100) % n_classes
        np.savez(path, train_x=rng.integers(0, 255, (100, *shape), dtype=np.uint8),
                 train_y=y if train_y is None else train_y,
                 test_x=rng.integers(0, 255, (max(50, n_classes), *shape), dtype=np.uint8),
                 test_y=np.arange(max(50, n_classes)) % n_classes)
        return path

    good = npz("good").read_bytes()
    npz("label_range", train_y=np.where(np.arange(100) == 3, 12, np.arange(100) % 10))
    npz("label_negative", train_y=np.where(np.arange(100) == 3, -1, np.arange(100) % 10))
    npz("label_float", train_y=(np.arange(100) % 10).astype(np.float32))
    npz("count", train_y=np.arange(90) % 10)
    npz("truncated", raw=good[: len(good) // 2])
    npz("corrupt", raw=b"this is not an archive" * 20)
    npz("cifar100", folder="CIFAR100", n_classes=100, shape=(32, 32, 3))

    raw = root / "mnist_truncated" / "MNIST" / "raw"  # IDX files as torchvision reads them
    raw.mkdir(parents=True)
    for split, n in (("train", 60), ("t10k", 20)):
        header = np.array([0x0803, n, 28, 28], dtype=">u4").tobytes()
        pixels = rng.integers(0, 255, n * 28 * 28, dtype=np.uint8).tobytes()
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + pixels)
        labels = np.array([0x0801, n], dtype=">u4").tobytes() + bytes(i % 10 for i in range(n))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(labels)
    test_labels = raw / "t10k-labels-idx1-ubyte"
    test_labels.write_bytes(test_labels.read_bytes()[:-7])  # a copy that stopped short
    return root


def _case(*args, says, run=True, marks=()):
    return pytest.param(list(args), says, run, marks=marks)


def _data(case):
    return ["benchmark=split_mnist", f"data.root={{data}}/{case}", *TINY]


CASES = {
    # values that make no sense
    "nan_loss": _case("optimizer.lr=1e6", "budget.iters=30", "eval.every=0",
                      "logger.console=false", says=["steps 1-10", "task 0", "optimizer.lr"]),
    "eval_every_negative": _case("eval.every=-1", "budget.iters=3", "logger.console=false",
                                 says=["eval.every"]),
    "iters_zero": _case("budget.iters=0", "eval.every=0", says=["budget.iters"]),
    "flops_negative": _case("budget.flops_per_task=-1", *TINY, says=["budget.flops_per_task"]),
    "match_missing": _case("budget.match=/nowhere/ref", *TINY,
                           says=["budget.match=/nowhere/ref", "no such directory"]),
    "probe_size_negative": _case("eval.probe_size=-3", "budget.iters=3",
                                 "logger.console=false", says=["eval.probe_size"]),
    "replay_batch_negative": _case("method=er", "method.replay_batch_size=-2", *TINY,
                                   says=["method.replay_batch_size"]),
    "hidden_zero": _case("model.hidden=[0]", *TINY, says=["model.hidden"]),
    "resnet_width_zero": _case("model=resnet18_reduced", "model.nf=0", *TINY,
                               says=["model.nf"]),
    "lr_negative": _case("optimizer.lr=-0.1", *TINY, says=["optimizer.lr"]),
    "adam_beta_above_one": _case("optimizer=adam", "optimizer.betas=[2,0.9]", *TINY,
                                 says=["optimizer.betas"]),
    "seed_negative": _case("seed=-1", *TINY, says=["seed"]),
    "n_tasks_not_dividing": _case("benchmark.n_tasks=3", *TINY, says=["benchmark.n_tasks=3"]),
    "replay_without_memory": _case("method=er", "memory=none", *TINY,
                                   says=["method=er", "memory.size"]),
    "train_every_zero": _case("logger.train_every=0", *TINY, says=["logger.train_every"]),
    "memory_size_negative": _case("method=er", "memory.size=-5", *TINY, says=["memory.size"]),
    "precision_unknown": _case("eval.precision=fp8", *TINY, says=["eval.precision"]),
    # keys: added with + (nothing would read it), misspelled, left ??? , unknown options
    "plus_unknown_key": _case("+budget.epoch=2", *TINY, says=["budget.epoch", "epochs"]),
    "misspelled_key": _case("budget.epoch=2", *TINY, says=["budget", "epoch", "epochs"],
                            run=False),
    "unknown_method": _case("method=err", *TINY, says=["method/err", "derpp"], run=False),
    "unknown_plugin": _case("plugin=[nope]", *TINY, says=["plugin/nope", "l2_pull"],
                            run=False),
    "features_weights_unset": _case("benchmark=split_cifar100_features",
                                    "data.root={data}/cifar100", *TINY,
                                    says=["benchmark.weights"]),
    "features_weights_missing": _case("benchmark=split_cifar100_features",
                                      "benchmark.weights=/nowhere/conv5.npz",
                                      "data.root={data}/cifar100", *TINY,
                                      says=["benchmark.weights=/nowhere/conv5.npz"]),
    # the machine
    # (split benchmarks take domain_il: a shared head; permuted ones only domain_il)
    "scenario_unsupported": _case("benchmark=permuted_mnist", "data.root={data}/good",
                                  "scenario=class_il", *TINY, says=["scenario=class_il"]),
    "device_mps": _case("device=mps", *TINY, says=["device=mps"]),
    "device_cuda": _case("device=cuda", *TINY, says=["device=cuda"], marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a CUDA device is there")),
    "output_root_unwritable": _case("output_root=/dev/null/out", *TINY,
                                    says=["/dev/null/out", "output_root"], run=False),
    "run_dir_impossible": _case("hydra.run.dir=/proc/no/such/dir", *TINY,
                                says=["/proc/no", "hydra.run.dir"], run=False),
    # data files
    "dataset_missing": _case(*_data("nothing"), says=["data.root", "nothing/MNIST"]),
    "npz_label_out_of_range": _case(*_data("label_range"), says=["mnist.npz", "label 12"]),
    "npz_label_negative": _case(*_data("label_negative"), says=["mnist.npz", "label -1"]),
    "npz_label_float": _case(*_data("label_float"), says=["mnist.npz", "float32"]),
    "npz_counts_differ": _case(*_data("count"), says=["mnist.npz", "100 images"]),
    "npz_truncated": _case(*_data("truncated"), says=["truncated/MNIST/mnist.npz", "corrupt"]),
    "npz_not_an_archive": _case(*_data("corrupt"), says=["corrupt/MNIST/mnist.npz"]),
    "mnist_file_truncated": _case(*_data("mnist_truncated"),
                                  says=["t10k-labels-idx1-ubyte", "truncated"]),
}


@pytest.mark.parametrize(("args", "says", "run"), CASES.values(), ids=CASES.keys())
def test_bad_input_fails_with_one_clear_message(args, says, run, data, tmp_path, monkeypatch,
                                                capsys):
    run_dir = tmp_path / "run"
    args = [a.replace("{data}", str(data)) for a in args]
    if not any(a.startswith(("output_root", "hydra.run.dir")) for a in args):
        args.append(f"hydra.run.dir={run_dir}")
    code, out = clbench(args, monkeypatch, capsys)
    assert code != 0
    assert "Traceback" not in out
    for text in says:
        assert text in out, (text, out)
    assert len(out.strip().splitlines()) <= 6, out
    if run:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed"
        assert says[0] in summary["error"]
        assert says[0] in (run_dir / "error.txt").read_text()
        assert str(run_dir) in out
    else:
        assert not run_dir.exists() or not (run_dir / "summary.json").exists()


def test_the_traceback_comes_with_hydra_full_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["clbench", *TINY, "eval.every=-1",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="eval.every"):
        main()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"  # put back as it was


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    def broken(self, batch):
        return {}["loss"]  # a KeyError in our own code is a bug, not bad input

    monkeypatch.setattr(Method, "observe", broken)
    with pytest.raises(KeyError):
        clbench([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "KeyError" in summary["error"]


def test_ctrl_c_records_why_and_where(monkeypatch, capsys, tmp_path):
    observe, calls = Method.observe, []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return observe(self, batch)

    monkeypatch.setattr(Method, "observe", interrupted)
    code, out = clbench([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 130 and "Traceback" not in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert "SIGINT" in summary["error"] and "step 4" in summary["error"]
    assert "task 1" in summary["error"] and "skip_done=true" in summary["error"]
    assert summary["error"] in out
    error_txt = (tmp_path / "run" / "error.txt").read_text()
    assert error_txt.startswith("interrupted: ") and "Traceback" in error_txt


def test_disk_full_keeps_the_summary_and_leaves_no_temporaries(monkeypatch, capsys, tmp_path):
    def full(state, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    code, out = clbench([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code != 0 and "Traceback" not in out
    assert f"no space left on device in {tmp_path / 'run'}: writing checkpoint.pt needs" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]
    assert "no space left" in (tmp_path / "run" / "error.txt").read_text()
    assert not list((tmp_path / "run").glob("**/*.tmp"))


def test_summary_is_overwritten_in_place_when_no_new_file_fits(monkeypatch, tmp_path):
    from cl_bench.loggers import csv_logger

    csv_logger.write_summary(tmp_path, {"status": "running", "error": ""})
    real = Path.write_text

    def full(self, text, *args, **kw):
        if self.name.endswith(".tmp"):
            real(self, text[:10], *args, **kw)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *args, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):  # summary.csv has no earlier version to overwrite
        csv_logger.write_summary(tmp_path, {"status": "failed", "error": "disk full"})
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_checkpoint_restarts_the_run(monkeypatch, capsys, tmp_path):
    args = [*TINY, "skip_done=true", f"output_root={tmp_path / 'out'}"]
    assert clbench(args, monkeypatch, capsys)[0] == 0
    [run_dir] = (tmp_path / "out").glob("runs/*/*")
    reference = (run_dir / "acc_matrix.csv").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    (run_dir / "checkpoint.pt").write_bytes(b"\x80garbage")
    for _ in range(2):  # the corrupt file is moved aside: later calls do not trip on it
        code, out = clbench(args, monkeypatch, capsys)
        assert code == 0 and "Traceback" not in out
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
        assert (run_dir / "checkpoint.pt.corrupt").is_file()
        (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    assert (run_dir / "acc_matrix.csv").read_text() == reference  # started over, same result
    assert list((tmp_path / "out").glob("runs/*/*")) == [run_dir]


def test_skip_done_sweep_with_every_job_done_leaves_no_directory(monkeypatch, capsys, tmp_path):
    args = ["-m", "seed=0,1", *TINY, "skip_done=true", f"output_root={tmp_path / 'out'}"]
    assert clbench(args, monkeypatch, capsys)[0] == 0
    sweeps = sorted((tmp_path / "out" / "multirun").glob("*/*"))
    assert len(sweeps) == 1
    time.sleep(1.1)  # a new sweep would get a new second in its name
    assert clbench(args, monkeypatch, capsys)[0] == 0
    assert sorted((tmp_path / "out" / "multirun").glob("*/*")) == sweeps


def test_run_dir_is_printed_whole_and_the_log_has_the_run(monkeypatch, capsys, tmp_path):
    root = tmp_path / ("a_folder_name_long_enough_that_the_path_" + "x" * 60)
    code, out = clbench(["budget.iters=3", "eval.every=0", f"output_root={root}"],
                        monkeypatch, capsys)
    assert code == 0
    [run_dir] = root.glob("runs/*/*")
    assert f"run dir: {run_dir}\n" in out  # on one line although stderr is no terminal
    log = (run_dir / "clbench.log").read_text()
    assert f"run {run_dir.name.split('_')[-2]}" in log
    assert "task 5/5" in log and "completed: acc_class_il" in log


@pytest.mark.parametrize("phase", ["init", "log"])
def test_wandb_failure_never_fails_the_run(phase, monkeypatch, capsys, tmp_path):
    """A fake wandb whose online init or whose logging raises: one warning, the run
    completes with its CSV files."""
    import types

    calls = []

    class FakeRun:
        summary = {}

        def define_metric(self, *args, **kw):
            pass

        def log(self, data):
            calls.append("log")
            if phase == "log" and calls.count("log") == 3:
                raise ConnectionError("W&B went away")

        def finish(self, *args, **kw):
            calls.append("finish")

    def init(mode, **kw):
        calls.append(mode)
        if phase == "init" and mode == "online":
            raise TimeoutError("no answer from W&B")
        return FakeRun()

    fake = types.SimpleNamespace(init=init, Settings=lambda **kw: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("cl_bench.loggers.wandb_logger.unreachable", lambda *a, **k: None)
    code, out = clbench(["logger=wandb", "logger.mode=online", *TINY,
                         f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 0, out
    assert out.count("warning: W&B") == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert len((tmp_path / "run" / "acc_matrix.csv").read_text().splitlines()) == 26
    if phase == "init":
        assert calls[:2] == ["online", "offline"] and "finish" in calls
    else:
        assert calls.count("log") == 3  # W&B off after the failure


@pytest.mark.slow  # two clbench processes, one with wandb: ~30 s
def test_wandb_without_network_logs_offline_within_seconds(tmp_path):
    """A bogus API key, WANDB_MODE=online and a server that refuses connections (a closed
    local port: nothing leaves the machine): one warning, offline files, the run
    completes with every CSV and its summary, within 30 s of the run without W&B."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update(HOME=str(tmp_path), WANDB_API_KEY="x" * 40, WANDB_MODE="online",
               WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_SILENT="true",
               OMP_NUM_THREADS="1")
    times = {}
    for name, extra in (("csv", []), ("wandb", ["logger=wandb"])):
        t0 = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "cl_bench.cli", *extra, *TINY,
             f"hydra.run.dir={tmp_path / name}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        times[name] = time.perf_counter() - t0
        assert result.returncode == 0, result.stderr
    assert result.stderr.count("unreachable") == 1 and "offline" in result.stderr
    assert times["wandb"] < times["csv"] + 30, times
    run = tmp_path / "wandb"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    for name in ("acc_matrix.csv", "curves.csv", "train.csv", "summary.csv"):
        assert (run / name).is_file(), name
    assert len((run / "train.csv").read_text().splitlines()) > 1
    assert list(run.glob("wandb/offline-run-*"))
