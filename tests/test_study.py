"""Studies as config (`clbench-study`), sweep status (`clbench-status`) and the provenance
fields of a run's summary."""

import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from cl_bench import study as st
from cl_bench.report.status import main as status_main
from cl_bench.report.status import sweep_status
from conftest import compose_config, data_root

TINY = """
title: tiny
protocol: [benchmark=digits, budget.epochs=null, budget.iters=40, eval.every=0,
           logger.console=false]
seeds: [0, 1]
rows:
  finetune: [method=finetune]
  er: [method=er, memory.size=200]
columns: [acc_class_il, train_flops]
ratio_to: finetune
readme: tiny-block
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def _study(args, cwd):
    env = {**os.environ, "CLBENCH_DATA": str(data_root())}
    return subprocess.run([sys.executable, "-m", "cl_bench.study", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_study_runs_every_row_and_seed_then_reuses_them(tiny, tmp_path):
    out = tmp_path / "out"
    done = _study([str(tiny), "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["er_seed0", "er_seed1", "finetune_seed0", "finetune_seed1"]
    runs = {d: json.loads((out / d / "summary.json").read_text()) for d in dirs}
    assert {(r["method"], r["seed"], r["logger.group"]) for r in runs.values()} == {
        ("er", 0, "er"), ("er", 1, "er"), ("finetune", 0, "finetune"),
        ("finetune", 1, "finetune")}
    table = pd.read_csv(out / "study.csv").set_index("row")
    assert list(table.index) == ["finetune", "er"] and list(table["n"]) == [2, 2]
    er_acc = [runs[f"er_seed{s}"]["acc_class_il"] for s in (0, 1)]
    assert table.loc["er", "acc_class_il_mean"] == pytest.approx(sum(er_acc) / 2)
    assert table.loc["er", "acc_class_il_mean"] > table.loc["finetune", "acc_class_il_mean"]
    md = (out / "study.md").read_text()
    ratio = (table.loc["er", "train_flops_mean"] / table.loc["finetune", "train_flops_mean"])
    assert f"{ratio:.3g}x" in md and "2/2" in md

    written = {d: (out / d / "summary.json").stat().st_mtime_ns for d in dirs}
    again = _study([str(tiny), "--out", str(out)], tmp_path)
    assert again.returncode == 0, again.stderr
    assert {d: (out / d / "summary.json").stat().st_mtime_ns for d in dirs} == written


def test_the_joblib_and_submitit_launchers_give_the_same_table(tiny, tmp_path):
    tables = []
    for name, launcher in (("joblib", ["hydra/launcher=local", "hydra.launcher.n_jobs=2"]),
                           ("submitit", ["hydra/launcher=submitit_local"])):
        out = tmp_path / name
        done = _study([str(tiny), "--out", str(out), *launcher], tmp_path)
        assert done.returncode == 0, done.stderr
        tables.append(pd.read_csv(out / "study.csv").filter(regex="^(row|n|.*_mean)$"))
    pd.testing.assert_frame_equal(*tables)
    assert (tmp_path / "submitit" / ".submitit").is_dir()  # the code path SLURM jobs take


def _fake_run(run_dir, status="completed", **fields):
    run_dir.mkdir(parents=True)
    summary = {"status": status, "git_commit": "abc", "wall_seconds": 100.0, **fields}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_a_row_outside_the_published_tolerance_says_by_how_much(tmp_path):
    path = tmp_path / "ref.yaml"
    path.write_text("""
title: ref
rows: {a: [method=finetune], b: [method=er], c: [method=der]}
seeds: [0, 1]
columns: [acc_class_il]
reference:
  metric: acc_class_il
  source: a paper
  tolerance: 2.0
  values: {a: [45.0, 1.0], b: [50.0, null]}
""")
    out = tmp_path / "out"
    for seed, acc in ((0, 0.50), (1, 0.52)):
        _fake_run(out / f"a_seed{seed}", seed=seed, acc_class_il=acc)
        _fake_run(out / f"b_seed{seed}", seed=seed, acc_class_il=acc)
    _fake_run(out / "c_seed0", seed=0, acc_class_il=0.3)
    assert st.main([str(path), "--out", str(out), "--report-only"]) == 0
    shown = (out / "study.md").read_text()
    # a: 51.0 - 45.0 = +6.0; our SEM = 1.414 / sqrt(2) = 1.0, allowed max(2, 2 * hypot(1, 1))
    row_a = next(line for line in shown.splitlines() if line.startswith("| a "))
    assert "+6.00" in row_a and "OUTSIDE by 3.17 (allowed 2.83)" in row_a
    row_b = next(line for line in shown.splitlines() if line.startswith("| b "))
    assert "+1.00" in row_b and "within (2.00)" in row_b  # max(2, 2 x hypot(1, 0))
    row_c = next(line for line in shown.splitlines() if line.startswith("| c "))
    assert "1/2 (fewer than asked)" in row_c and "| –" in row_c


def test_study_files_are_checked_with_the_fix_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\nrows: {a: [method=er]}\nratio_to: b\n")
    with pytest.raises(st.StudyError, match="ratio_to 'b' is not a row; rows: a"):
        st.load_study(str(bad))
    bad.write_text("title: x\nrowz: {a: [method=er]}\n")
    with pytest.raises(st.StudyError, match="rowz"):
        st.load_study(str(bad))
    with pytest.raises(st.StudyError, match="no study 'nope'.*studies: "):
        st.load_study("nope")


def test_every_study_composes_each_of_its_rows():
    """A study names real options and keys: every row of every conf/study file composes."""
    assert st.study_names(), "conf/study/ has no study"
    for name in st.study_names():
        study = st.load_study(name)
        for job in st.jobs(study, st.STUDY_DIR, [])[: len(study.rows)]:
            cfg = compose_config(job["overrides"])
            assert cfg.logger.group == job["row"], (name, job["row"])


def test_the_readme_block_is_rewritten_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table tiny-block -->\nold\n<!-- /table -->\nrest\n")
    st.update_readme(readme, "tiny-block", "| new |\n")
    assert readme.read_text() == ("intro\n<!-- table tiny-block -->\n| new |\n"
                                  "<!-- /table -->\nrest\n")
    with pytest.raises(st.StudyError, match="no block '<!-- table other -->'"):
        st.update_readme(readme, "other", "x")


def test_status_counts_completed_running_failed_and_missing_runs(tmp_path, capsys):
    jobs = [{"dir": d} for d in ("a_seed0", "a_seed1", "b_seed0", "b_seed1", "c_seed0")]
    (tmp_path / "study_jobs.json").write_text(json.dumps(jobs))
    _fake_run(tmp_path / "a_seed0", wall_seconds=100.0)
    _fake_run(tmp_path / "a_seed1", wall_seconds=300.0)
    _fake_run(tmp_path / "b_seed0", status="failed", error="ConfigError: bad key\ntrace")
    _fake_run(tmp_path / "b_seed1", status="running")
    status = sweep_status(tmp_path, now=time.time())
    assert status.counts() == {"completed": 2, "running": 1, "failed": 1, "interrupted": 0,
                               "missing": 1}
    assert status.eta_seconds == pytest.approx(200.0 * 2 / 1)  # median x left / running
    assert status_main([str(tmp_path)]) == 1  # a failed run
    out = capsys.readouterr().out
    assert "5 runs: 2 completed, 1 running, 1 failed, 0 interrupted, 1 missing" in out
    assert "b_seed0: ConfigError: bad key" in out and "ETA: ~6m40s" in out


def test_a_summary_names_the_machine_that_made_it(run_job):
    summary, _ = run_job("budget.epochs=null", "budget.iters=2", "eval.every=0", "device=cpu")
    assert summary["host"] == socket.gethostname()
    assert summary["cpu_cores"] >= 1 and summary["cpu_model"] not in ("", None)
    assert summary["gpu_model"] is None and summary["device"] == "cpu"
    assert summary["git_commit"] and summary["torch_version"] and summary["clbench_version"]


def test_a_subset_of_rows_and_seeds_runs_now_and_the_rest_stays_listed(tiny):
    study = st.load_study(str(tiny))
    now = st.subset(study, "er", "1")
    assert list(now.rows) == ["er"] and now.seeds == [1]
    assert [j["dir"] for j in st.jobs(now, tiny.parent, [])] == ["er_seed1"]
    with pytest.raises(st.StudyError, match=r"--rows \['gr'\] are not rows of this study"):
        st.subset(study, "gr", None)
    shown, numbers = st.table(study, pd.DataFrame())
    assert list(shown["seeds"]) == ["0/2 (fewer than asked)"] * 2


def test_each_launch_has_its_own_jobs_file_so_two_can_share_a_folder(tiny, tmp_path,
                                                                    monkeypatch):
    """Two `clbench-study` processes running subsets into one folder (rows on two cores)
    must not read each other's job list: each launch writes its own file, removed after."""
    from cl_bench import cli

    seen = {}

    def fake_main(prog):
        arg = next(a for a in sys.argv if a.startswith("hydra.sweeper.jobs_file="))
        path = arg.split("=", 1)[1]
        seen["file"], seen["jobs"] = path, json.loads(open(path).read())

    monkeypatch.setattr(cli, "main", fake_main)
    study = st.load_study(str(tiny))
    st.launch(study, tmp_path / "out", [], [], st.subset(study, "er", "0"))
    assert str(os.getpid()) in seen["file"] and not os.path.exists(seen["file"])
    assert [j["dir"] for j in seen["jobs"]] == ["er_seed0"]
    grid = json.loads((tmp_path / "out" / "study_jobs.json").read_text())
    assert len(grid) == 4  # the whole grid, for clbench-status
