"""Issue 30's classes of bad input and faults, each through the `clbench` command itself:
references and keys the run would not honour, damaged weight files, a full disk, messages
that name the real cause, run identity and leftovers, console streams, thread control.

Every refused case exits non-zero with one short message naming the key or the file, shows
no traceback (HYDRA_FULL_ERROR unset) and keeps what was written before."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cl_bench import checkpoint
from cl_bench.experiment import Run
from cl_bench.loggers import csv_logger
from cl_bench.methods.base import Method
from conftest import REPO, clbench, compose_config, data_root

TINY = ["budget.iters=3", "eval.every=0", "logger.console=false"]


def refused(args, tmp_path, monkeypatch, capsys, says, run=True, name="run"):
    """Runs `clbench ARGS` into tmp_path/<name>; asserts a refused start with one short
    message holding every text of `says`, and (`run`) a failed summary and error.txt that
    hold the first of them. Returns (message, run directory)."""
    run_dir = tmp_path / name
    code, out = clbench([*args, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code != 0, out
    assert "Traceback" not in out and "weights_only=False" not in out, out
    for text in says:
        assert text in out, (text, out)
    assert len(out.strip().splitlines()) <= 6, out
    if run:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and says[0] in summary["error"]
        assert says[0] in (run_dir / "error.txt").read_text()
    return out, run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A completed tiny run (digits, 5 tasks, 3 steps each) to match FLOPs with."""
    run_dir = tmp_path_factory.mktemp("ref") / "ref"
    cfg = compose_config([f"data.root={data_root()}", "budget.iters=3", "eval.every=0",
                          "logger.console=false", "logger.train_every=1"])
    Run(cfg, run_dir).execute()
    return run_dir


def _copy(reference: Path, tmp_path: Path) -> Path:
    target = tmp_path / "reference"
    shutil.copytree(reference, target)
    return target


# -- 1. references and keys taken without checking ------------------------------------------

def test_a_truncated_match_reference_is_refused(reference, tmp_path, monkeypatch, capsys):
    ref = _copy(reference, tmp_path)
    lines = (ref / "train.csv").read_text().splitlines(keepends=True)
    (ref / "train.csv").write_text("".join(lines[:7]))  # tasks 3-5 lost: targets would be 0
    out, _ = refused([f"budget.match={ref}", *TINY], tmp_path, monkeypatch, capsys,
                     says=[f"budget.match={ref}", "truncated"])
    assert "truncated" in out


def test_a_match_reference_of_another_stream_is_refused(reference, tmp_path, monkeypatch,
                                                        capsys):
    for i, (args, says) in enumerate((
            (["benchmark.n_tasks=2"], "benchmark.n_tasks=5 there, 2 here"),  # other classes
            (["stream=blurry"], "stream.name=task there, blurry here"),
            (["benchmark=split_mnist"], "benchmark.name=digits there, split_mnist here"))):
        out, _ = refused([f"budget.match={reference}", *args, *TINY], tmp_path, monkeypatch,
                         capsys, says=[f"budget.match={reference}", says], name=f"run{i}")
        assert says in out


@pytest.mark.parametrize(("args", "says"), [
    (["method=rer_er", "method.replay_batch_size=32"], ["method.replay_batch_size=32",
                                                        "method.replay_batch_size=10"]),
    (["method=rer_derpp", "budget.batch_size=16", "method.replay_batch_size=10"],
     ["method.replay_batch_size=10", "method.replay_batch_size=16"]),
    (["method=rer_er", "method.warm_start=1", "method.constant_weights=[1,1]"],
     ["method.constant_weights", "method.warm_start"]),
    (["logger=wandb", "logger.mode=onlin"], ["logger.mode=onlin", "offline"]),
    (["logger=wandb", "logger.init_timeout=0"], ["logger.init_timeout"]),
    (["stream=online", "budget.epochs=5"], ["budget.epochs=5", "set budget.epochs=1"]),
    (["stream=online", "budget.drop_last=true"], ["budget.drop_last=true"]),
    (["stream=blurry", "stream.batch_size=5"], ["stream.batch_size=5", "budget.batch_size"]),
    (["threads=0"], ["threads must be >= 1"]),
], ids=["rer_replay_batch", "rer_derpp_batch", "rer_constant_without_phase", "wandb_mode",
        "wandb_timeout", "online_epochs", "online_drop_last", "stream_batch_unused",
        "threads_zero"])
def test_a_value_the_run_would_not_honour_is_refused(args, says, tmp_path, monkeypatch, capsys):
    out, _ = refused([*args, *TINY], tmp_path, monkeypatch, capsys, says=says)
    assert says[0] in out


def test_a_wandb_mode_from_the_environment_is_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offlne")
    out, _ = refused(["logger=wandb", *TINY], tmp_path, monkeypatch, capsys,
                     says=["WANDB_MODE=offlne", "logger.mode"])
    assert "WANDB_MODE=offlne" in out


def test_rer_follows_the_batch_size_by_default(run_job):
    summary, _ = run_job("method=rer_er", "budget.batch_size=16", "budget.iters=3",
                         "eval.every=0")
    assert summary["method.replay_batch_size"] == 16 and summary["status"] == "completed"


# -- 2. damaged weight files ----------------------------------------------------------------

@pytest.fixture
def damaged(tmp_path) -> dict[str, Path]:
    """Weight files that do not load: garbage, a truncated torch file, a bad safetensors
    header, a conv5 .npz truncated and one lacking arrays."""
    d = tmp_path / "weights"
    d.mkdir()
    good = d / "good.pt"
    torch.save({"w": torch.zeros(100, 100)}, good)
    files = {"garbage.pt": b"\x80\x02garbage" * 10, "truncated.pt": good.read_bytes()[:5000],
             "bad.safetensors": b"\xff" * 8 + b"{not json",
             "not_a_dict.pt": None, "truncated.npz": None, "lacking.npz": None}
    for name, raw in files.items():
        if raw is not None:
            (d / name).write_bytes(raw)
    torch.save([torch.zeros(3)], d / "not_a_dict.pt")
    np.savez(d / "full.npz", **{f"conv{i}.weight": np.zeros((4, 4, 3, 3), np.float32)
                                 for i in range(1, 6)})
    (d / "truncated.npz").write_bytes((d / "full.npz").read_bytes()[:300])
    np.savez(d / "lacking.npz", other=np.zeros(3))
    rng = np.random.default_rng(0)
    for folder, n_classes in (("CIFAR10", 10), ("CIFAR100", 100)):  # tiny 32x32 datasets
        (tmp_path / folder).mkdir()
        y = np.arange(2 * n_classes) % n_classes
        np.savez(tmp_path / folder / f"{folder.lower()}.npz",
                 train_x=rng.integers(0, 255, (len(y), 32, 32, 3), np.uint8), train_y=y,
                 test_x=rng.integers(0, 255, (len(y), 32, 32, 3), np.uint8), test_y=y)
    return {name: d / name for name in files}


@pytest.mark.parametrize("name", ["garbage.pt", "truncated.pt", "bad.safetensors",
                                  "not_a_dict.pt"])
def test_a_damaged_model_weights_file_is_one_message(name, damaged, tmp_path, monkeypatch,
                                                     capsys):
    path = damaged[name]
    out, _ = refused(["model=resnet18_reduced", "model.nf=4", f"model.weights={path}", *TINY],
                     tmp_path, monkeypatch, capsys,
                     says=[f"model.weights={path}", "state dict", "Fix:"])
    assert f"model.weights={path}" in out


@pytest.mark.parametrize("name", ["truncated.npz", "lacking.npz", "garbage.pt"])
def test_a_damaged_conv5_npz_is_one_message(name, damaged, tmp_path, monkeypatch, capsys):
    path = damaged[name]
    out, _ = refused(["model=conv5_frozen", f"model.weights={path}", "benchmark=split_cifar10",
                      f"data.root={tmp_path}", *TINY], tmp_path, monkeypatch, capsys,
                     says=[f"model.weights={path}", "conv5", "scripts/pretrain_extractor.py"])
    assert f"model.weights={path}" in out


def test_a_damaged_features_extractor_is_one_message(damaged, tmp_path, monkeypatch, capsys):
    path = damaged["truncated.npz"]
    out, _ = refused(["benchmark=split_cifar100_features", f"benchmark.weights={path}",
                      f"data.root={tmp_path}", *TINY], tmp_path, monkeypatch, capsys,
                     says=[f"benchmark.weights={path}", "scripts/pretrain_extractor.py"])
    assert f"benchmark.weights={path}" in out


def test_a_damaged_pretrain_cache_names_clbench_pretrain(tmp_path):
    from omegaconf import OmegaConf

    from cl_bench import weights as pretrained
    from cl_bench.errors import DamagedFile

    cfg = compose_config(["model=resnet18_reduced", "model.weights=pretrain"]).model
    data = OmegaConf.create({})  # never read: the cache file is found first
    sha = "0" * 64
    path = pretrained.cache_file(cfg, str(tmp_path), sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cl_bench.data.datasets.load_dataset", lambda *a, **k: data)
        mp.setattr("cl_bench.data.features.data_digest", lambda d: sha)
        with pytest.raises(DamagedFile, match="clbench-pretrain model=resnet18_reduced") as err:
            pretrained.self_pretrained(cfg, build=None, data_root=None,
                                       cache_root=str(tmp_path), device="cpu")
    assert str(path) in str(err.value) and "weights_only=False" not in str(err.value)


# -- 3. disk full -------------------------------------------------------------------------

def _no_space(path=None):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _assert_disk_full(out, run_dir: Path, file: str):
    assert f"no space left on device in {run_dir}" in out, out
    assert f"writing {file} needs" in out and "bytes" in out, out
    assert out.count("no space left") == 1 and "Traceback" not in out, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left" in summary["error"]
    error = (run_dir / "error.txt").read_text()
    assert error.startswith("failed: DiskFull: no space left") and "Traceback" in error
    assert not list(run_dir.glob("**/*.tmp")) and not list(run_dir.glob(".clbench-reserve"))


def test_disk_full_at_the_second_checkpoint(monkeypatch, capsys, tmp_path):
    """torch's writer fails like on a real full disk (RuntimeError 'unexpected pos', not an
    OSError) once the folder has no space: the first task's checkpoint stays loadable."""
    save, calls = torch.save, []

    def full(state, path):
        calls.append(path)
        if len(calls) == 2 and not hasattr(path, "write"):  # the 2nd checkpoint file
            Path(path).write_bytes(b"half a checkpoint")
            monkeypatch.setattr("cl_bench.errors.free_bytes", lambda folder: 1234)
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos "
                               "64 vs 0")
        return save(state, path)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    code, out = clbench([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code != 0
    _assert_disk_full(out, tmp_path / "run", "checkpoint.pt")
    assert "(1,234 bytes free)" in out
    assert checkpoint.load_checkpoint(tmp_path / "run")["task"] == 0
    acc = pd.read_csv(tmp_path / "run" / "acc_matrix.csv")
    assert acc.train_task.tolist() == [0] * 5 + [1] * 5  # tasks 1 and 2 logged, intact


def test_disk_full_at_a_csv_writer(monkeypatch, capsys, tmp_path):
    """ENOSPC while appending acc_matrix.csv rows of the third task: the rows of the first
    two stay, the summary and error.txt are written (from the space held in reserve)."""
    log_acc, calls = csv_logger.CSVLogger.log_acc_rows, []

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise _no_space()

        def flush(self):
            pass

        def close(self):
            self.f.close()

    def log_acc_rows(self, rows):
        calls.append(1)
        if len(calls) == 3:
            f = self._files["acc_matrix"]
            self._writers["acc_matrix"] = csv.DictWriter(FullFile(f), self._columns[
                "acc_matrix"], restval="", extrasaction="ignore")
        return log_acc(self, rows)

    monkeypatch.setattr(csv_logger.CSVLogger, "log_acc_rows", log_acc_rows)
    code, out = clbench([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code != 0
    _assert_disk_full(out, tmp_path / "run", "acc_matrix.csv")
    acc = pd.read_csv(tmp_path / "run" / "acc_matrix.csv")
    assert acc.train_task.tolist() == [0] * 5 + [1] * 5


@pytest.mark.slow  # a clbench process: ~5-15 s
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="mounting a small tmpfs needs root on Linux")
def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A 1.5 MiB tmpfs: the run's first checkpoint (~0.8 MiB) fits beside the 0.5 MiB held
    in reserve, the second does not."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
        env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        result = subprocess.run([sys.executable, "-m", "cl_bench.cli", *TINY,
                                 f"data.root={data_root()}", f"hydra.run.dir={mount / 'run'}"],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 1, result.stderr
        out = result.stdout + result.stderr
        assert out.count("no space left on device") == 1, out
        assert "Traceback" not in out and "Logging error" not in out, out
        _assert_disk_full(out, mount / "run", "checkpoint.pt")
        assert checkpoint.load_checkpoint(mount / "run")["task"] == 0
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- 4. messages that blame the wrong thing ----------------------------------------------

@pytest.fixture
def incomplete(tmp_path) -> Path:
    """Data roots whose MNIST archive lacks class 9 in the training split (`train`) or
    class 4 in the test split (`test`)."""
    rng = np.random.default_rng(0)
    for case, train_y, test_y in (("train", np.arange(90) % 9, np.arange(50) % 10),
                                  ("test", np.arange(100) % 10,
                                   np.where(np.arange(50) % 10 == 4, 5, np.arange(50) % 10))):
        d = tmp_path / case / "MNIST"
        d.mkdir(parents=True)
        np.savez(d / "mnist.npz", train_x=rng.integers(0, 255, (len(train_y), 8, 8), np.uint8),
                 train_y=train_y, test_x=rng.integers(0, 255, (50, 8, 8), np.uint8),
                 test_y=test_y)
    return tmp_path


@pytest.mark.parametrize(("case", "says"), [("train", "train_y has no image of class 9"),
                                            ("test", "test_y has no image of class 4")])
def test_a_data_file_missing_a_class_is_blamed(case, says, incomplete, tmp_path, monkeypatch,
                                               capsys):
    out, _ = refused(["benchmark=split_mnist", f"data.root={incomplete / case}", *TINY],
                     tmp_path, monkeypatch, capsys,
                     says=[f"{case}/MNIST/mnist.npz", says, "incomplete"])
    assert "n_tasks" not in out


@pytest.mark.parametrize("method", ["supsup", "wsn", "packnet", "hat"])
def test_a_masking_method_with_the_sparsity_plugin_is_blamed(method, tmp_path, monkeypatch,
                                                             capsys):
    out, _ = refused([f"method={method}", "plugin=[sparsity]", "scenario=task_il", *TINY],
                     tmp_path, monkeypatch, capsys,
                     says=[f"method={method}", "plugin sparsity", "Nearest working choice"])
    assert "KeyError" not in out and "need a model" not in out


# -- 5. run identity and leftovers --------------------------------------------------------

def _install(tmp_path: Path, name: str, edit: str = "") -> Path:
    """The package laid out as a wheel installs it (cl_bench/ with conf/ inside, no git),
    with `edit` appended to one module."""
    site = tmp_path / name
    shutil.copytree(REPO / "cl_bench", site / "cl_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", site / "cl_bench" / "conf")
    with open(site / "cl_bench" / "tune.py", "a") as f:
        f.write(edit)
    return site


def test_without_git_the_run_id_follows_the_installed_source(tmp_path, monkeypatch):
    """A wheel install has no git: its run id takes the hash of the installed source, so
    two builds of one version from different sources differ (with git: the commit)."""
    from cl_bench import identity

    a, b = _install(tmp_path, "a"), _install(tmp_path, "b", "\n# another build\n")
    cfg = compose_config([])
    ids = {}
    monkeypatch.setattr(identity, "git_commit", lambda: "unknown")
    for site in (a, b):
        monkeypatch.setattr(identity, "source_hash",
                            lambda s=site: identity._hash_of(s / "cl_bench"))
        ids[site.name] = identity.run_id(cfg)
    assert ids["a"] != ids["b"]
    monkeypatch.setattr(identity, "git_commit", lambda: "c440ceeccbad")  # with git: the commit
    monkeypatch.setattr(identity, "source_hash", lambda: "0" * 12)
    with_git = identity.run_id(cfg)
    monkeypatch.setattr(identity, "source_hash", lambda: "1" * 12)
    assert identity.run_id(cfg) == with_git


@pytest.mark.slow  # two wheel builds and installs, a process per install: ~1 min
def test_two_wheels_from_different_sources_get_different_run_ids(tmp_path):
    from test_packaging import _no_build_isolation

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    code = ("from hydra import compose, initialize_config_dir; import cl_bench.cli as c; "
            "from cl_bench.identity import run_id, git_commit; "
            "initialize_config_dir(config_dir=c.CONF_DIR, version_base='1.3').__enter__(); "
            "print(git_commit(), run_id(compose('config')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = []
    for name, edit in (("a", ""), ("b", "\n# another build\n"), ("c", "")):
        src = tmp_path / name / "src"
        src.mkdir(parents=True)
        for f in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy2(REPO / f, src / f)
        for folder in ("cl_bench", "conf"):
            shutil.copytree(REPO / folder, src / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
        with open(src / "cl_bench" / "tune.py", "a") as f:
            f.write(edit)
        subprocess.run([*pip, "wheel", "--no-deps", *_no_build_isolation(), "-q", "-w",
                        str(tmp_path / name / "dist"), str(src)], check=True,
                       capture_output=True)
        wheel = next((tmp_path / name / "dist").glob("cl_bench-*.whl"))
        site = tmp_path / name / "site"
        subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       check=True, capture_output=True)
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                                text=True, env={**env, "PYTHONPATH": str(site)}, timeout=300)
        assert result.returncode == 0, result.stderr
        commit, rid = result.stdout.split()
        assert commit == "unknown"
        found.append(rid)
    assert found[0] != found[1] and found[0] == found[2]


def test_the_source_hash_covers_the_packaged_config(tmp_path):
    from cl_bench.identity import _hash_of as source_hash

    a, b, c = _install(tmp_path, "a"), _install(tmp_path, "b"), _install(tmp_path, "c")
    with open(b / "cl_bench" / "conf" / "budget" / "default.yaml", "a") as f:
        f.write("# another default\n")
    assert source_hash(a / "cl_bench") == source_hash(c / "cl_bench")
    assert source_hash(a / "cl_bench") != source_hash(b / "cl_bench")


def test_a_run_resumed_to_completion_has_no_stale_error_file(monkeypatch, capsys, tmp_path):
    observe, calls = Method.observe, []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return observe(self, batch)

    args = [*TINY, "skip_done=true", f"output_root={tmp_path / 'out'}"]
    monkeypatch.setattr(Method, "observe", interrupted)
    assert clbench(args, monkeypatch, capsys)[0] == 130
    [run_dir] = (tmp_path / "out").glob("runs/*/*")
    assert (run_dir / "error.txt").is_file()
    monkeypatch.setattr(Method, "observe", observe)
    code, out = clbench(args, monkeypatch, capsys)
    assert code == 0, out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert not (run_dir / "error.txt").exists()


@pytest.mark.parametrize("outcome", ["completed", "failed", "interrupted"])
def test_signal_handlers_are_restored_after_main(outcome, monkeypatch, capsys, tmp_path):
    def mine(signum, frame):
        pass

    previous = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if outcome == "interrupted":
            def stop(self, batch):
                raise KeyboardInterrupt
            monkeypatch.setattr(Method, "observe", stop)
        args = [*TINY, *(["eval.every=-1"] if outcome == "failed" else [])]
        code, _ = clbench([*args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
        assert (code == 0) == (outcome == "completed")
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- 6. README promises -------------------------------------------------------------------

def test_final_metrics_and_run_dir_go_to_stdout(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["clbench", "budget.iters=3", "eval.every=0",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    from cl_bench.cli import main

    main()
    captured = capsys.readouterr()
    assert f"run dir: {tmp_path / 'run'}" in captured.out
    assert "final metrics" in captured.out and "acc" in captured.out
    assert "task 5/5" in captured.err and "task 5/5" not in captured.out  # progress: stderr


def test_n_tasks_is_checked_before_the_features_are_extracted(tmp_path, monkeypatch, capsys):
    from cl_bench.data import features
    from cl_bench.models.conv5 import conv5_extractor, save_conv5

    weights = tmp_path / "conv5.npz"
    save_conv5(conv5_extractor(), torch.nn.Linear(1024, 10), weights)
    d = tmp_path / "CIFAR100"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.savez(d / "cifar100.npz", train_x=rng.integers(0, 255, (200, 32, 32, 3), np.uint8),
             train_y=np.arange(200) % 100, test_x=rng.integers(0, 255, (100, 32, 32, 3),
                                                                 np.uint8),
             test_y=np.arange(100) % 100)

    def extract(*args, **kw):
        raise AssertionError("features extracted before benchmark.n_tasks was checked")

    monkeypatch.setattr(features, "extract", extract)
    refused(["benchmark=split_cifar100_features", "benchmark.n_tasks=7",
             f"benchmark.weights={weights}", f"data.root={tmp_path}", *TINY], tmp_path,
            monkeypatch, capsys, says=["benchmark.n_tasks=7", "100 classes"])


def test_compare_shows_n_1_and_no_spread_for_a_single_run():
    from cl_bench.report.tables import aggregate, display_table

    runs = pd.DataFrame({"method": ["er", "er", "ft"], "seed": [0, 1, 0],
                         "acc_class_il": [0.5, 0.7, 0.25]})
    shown = display_table(aggregate(runs, ["method"]), ["method"]).set_index("method")
    assert shown.loc["ft", "acc_class_il"] == "0.2500 (n=1)"
    assert shown.loc["er", "acc_class_il"].startswith("0.6000 ± 0.1414 [")


# -- 7. threads ---------------------------------------------------------------------------

def test_tests_run_with_one_torch_thread():
    if "CLBENCH_TEST_THREADS" not in os.environ:
        assert torch.get_num_threads() == 1


def test_threads_is_set_and_recorded(run_job):
    before = torch.get_num_threads()
    try:
        summary, _ = run_job("threads=2", "budget.iters=3", "eval.every=0")
        assert summary["threads"] == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    summary, _ = run_job("budget.iters=3", "eval.every=0")
    assert summary["threads"] == before  # null: torch's choice, untouched


def test_an_oversubscribed_machine_gets_one_warning(monkeypatch, capsys, tmp_path):
    from cl_bench import checks

    monkeypatch.setattr(checks.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    monkeypatch.setattr(checks.os, "sched_getaffinity", lambda pid: {0, 1})
    assert checks.oversubscribed(1) is None
    assert "load average 3.5 on 2 cores" in checks.oversubscribed(2)
    monkeypatch.setattr(checks.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert checks.oversubscribed(2) is None  # only this process: 2 threads fit 2 cores
    monkeypatch.setattr(checks.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    before = torch.get_num_threads()
    try:
        code, out = clbench(["threads=2", *TINY, f"hydra.run.dir={tmp_path / 'run'}"],
                            monkeypatch, capsys)
    finally:
        torch.set_num_threads(before)
    assert code == 0 and out.count("warning: load average 3.5 on 2 cores") == 1, out
    assert "threads=1" in out
