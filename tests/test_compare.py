"""clbench-compare on a 2 methods x 2 seeds set of runs, plus one failed run."""

import csv
import json
import shutil
import statistics

import pandas as pd
import pytest
from matplotlib.figure import Figure

from cl_bench.report.compare import main as compare
from cl_bench.report.plots import pareto_front
from cl_bench.report.tables import group_keys


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from cl_bench.experiment import run_experiment
    from conftest import compose_config, data_root

    root = tmp_path_factory.mktemp("sweep")
    for method in ("finetune", "er"):
        for seed in (0, 1):
            cfg = compose_config([f"method={method}", f"seed={seed}", "budget.iters=15",
                                  "eval.every=5", "memory.size=50", "logger.console=false",
                                  f"data.root={data_root()}"])
            run_experiment(cfg, root / f"{method}_{seed}")
    with pytest.raises(ValueError):
        run_experiment(compose_config(["benchmark=permuted_mnist", "benchmark.dataset=digits",
                                       "scenario=class_il", "logger.console=false"]),
                       root / "broken")
    return root


def _from_csv(path, column):
    with open(path) as f:
        return float(next(csv.DictReader(f))[column])


def test_means_match_hand_computed_values(sweep, tmp_path):
    assert compare([str(sweep), "--out", str(tmp_path), "--plot"]) == 0
    table = pd.read_csv(tmp_path / "compare.csv").set_index("method")
    assert sorted(table.index) == ["er", "finetune"] and (table.n == 2).all()
    for method in ("er", "finetune"):
        accs = [_from_csv(sweep / f"{method}_{s}" / "summary.csv", "acc_class_il") for s in (0, 1)]
        assert table.loc[method, "acc_class_il_mean"] == pytest.approx(statistics.mean(accs))
        assert table.loc[method, "acc_class_il_std"] == pytest.approx(statistics.stdev(accs))
        # 95% CI half-width with 2 seeds: t(0.975, 1) * std / sqrt(2)
        assert table.loc[method, "acc_class_il_ci95"] == pytest.approx(
            12.7062047 * statistics.stdev(accs) / 2 ** 0.5, rel=1e-6)
        flops = _from_csv(sweep / f"{method}_0" / "summary.csv", "train_flops")
        assert table.loc[method, "train_flops_mean"] == pytest.approx(flops)
    for name in ("compare.md", "compare.tex", "acc_matrices.png", "stability_curves.png",
                 "acc_vs_flops.png"):
        assert (tmp_path / name).stat().st_size > 200, name
    assert "\\pm" in (tmp_path / "compare.tex").read_text()


def test_failed_run_is_listed_apart_never_averaged(sweep, tmp_path):
    assert compare([str(sweep), "--out", str(tmp_path), "--format", "md,csv"]) == 0
    unfinished = pd.read_csv(tmp_path / "compare_unfinished.csv")
    assert unfinished.status.tolist() == ["failed"]
    assert unfinished.run_dir.iloc[0].endswith("broken")
    assert pd.read_csv(tmp_path / "compare.csv").n.sum() == 4
    assert "not completed" in (tmp_path / "compare.md").read_text()
    assert not (tmp_path / "compare.tex").exists()


def test_group_keys_are_what_varies():
    runs = pd.DataFrame({"method": ["er", "er", "ft", "ft"],
                         "method._target_": ["a", "a", "b", "b"],
                         "memory.size": [200, 500, 200, 500], "seed": [0, 1, 0, 1],
                         "benchmark": ["d"] * 4})
    assert group_keys(runs) == ["method", "memory.size"]


def test_bad_by_key_and_format_fail_clearly(sweep, tmp_path, capsys):
    assert compare([str(sweep), "--out", str(tmp_path), "--by", "methd"]) == 2
    assert "methd" in capsys.readouterr().out
    assert compare([str(sweep), "--format", "xlsx"]) == 2


def test_pareto_front():
    flops = [1.0, 2.0, 3.0, 4.0]
    acc = [0.5, 0.4, 0.8, 0.7]
    assert pareto_front(pd.Series(flops).to_numpy(), pd.Series(acc).to_numpy()).tolist() == [0, 2]


def test_tables_show_the_ci_and_escape_latex(sweep, tmp_path):
    assert compare([str(sweep), "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "compare.csv").set_index("method")
    mean, ci = table.loc["er", "acc_class_il_mean"], table.loc["er", "acc_class_il_ci95"]
    interval = f"[{mean - ci:.4f}, {mean + ci:.4f}]"
    assert interval in (tmp_path / "compare.md").read_text()
    assert "95% CI" in (tmp_path / "compare.md").read_text()
    tex = (tmp_path / "compare.tex").read_text()
    assert interval in tex and r"acc\_class\_il" in tex and "\\toprule" in tex

    from cl_bench.report.tables import to_latex

    frame = pd.DataFrame({"a_b": ["x & y", "50%", "$5 #1 {z}"]})
    assert to_latex(frame).split("\\midrule")[1].split("\\bottomrule")[0].split() == [
        "x", r"\&", "y", "\\\\", r"50\%", "\\\\", r"\$5", r"\#1", r"\{z\}", "\\\\"]


def test_help_says_95_percent_once(capsys):
    with pytest.raises(SystemExit):
        compare(["--help"])
    out = capsys.readouterr().out
    assert "95% CI" in out and "%%" not in out


def test_a_directory_whose_only_run_has_no_summary(tmp_path, capsys):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    assert compare([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "nothing to average" in out and "missing" in out


def test_metrics_option_keeps_the_named_columns_and_rejects_unknown_ones(sweep, tmp_path,
                                                                         capsys):
    assert compare([str(sweep), "--out", str(tmp_path), "--format", "md",
                    "--metrics", "acc_class_il,train_flops"]) == 0
    header = (tmp_path / "compare.md").read_text().splitlines()[2]
    assert [c.strip() for c in header.strip("|").split("|")][-3:] == [
        "n", "acc_class_il", "train_flops"]
    capsys.readouterr()
    assert compare([str(sweep), "--out", str(tmp_path), "--metrics", "acc_nope"]) == 2
    assert "acc_nope" in capsys.readouterr().out


def test_acc_vs_flops_plots_the_flops_column_chosen(sweep, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(sweep, runs)
    for path in runs.glob("*_*/summary.json"):  # er sparse-like; finetune older than the dense
        summary = json.loads(path.read_text())
        if summary["method"] == "er":
            summary["train_flops_dense"] = 3 * summary["train_flops"]
        else:
            del summary["train_flops_dense"]
        path.write_text(json.dumps(summary))
    plotted, savefig = {}, Figure.savefig

    def spy(fig, path, *args, **kwargs):
        if str(path).endswith("acc_vs_flops.png"):
            ax = fig.axes[0]
            plotted.update(xlabel=ax.get_xlabel(), x=list(ax.containers[0].lines[0].get_xdata()))
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    flops = {m: statistics.mean(_from_csv(sweep / f"{m}_{s}" / "summary.csv", "train_flops")
                                for s in (0, 1)) for m in ("er", "finetune")}  # groups sorted
    capsys.readouterr()
    assert compare([str(runs), "--out", str(tmp_path / "a"), "--plot", "--flops", "executed"]) == 0
    assert (tmp_path / "a" / "acc_vs_flops.png").stat().st_size > 200
    assert "executed" in plotted["xlabel"]
    assert plotted["x"] == pytest.approx([3 * flops["er"], flops["finetune"]])
    note = " ".join(capsys.readouterr().out.split())
    assert "2 of 4 runs have no train_flops_dense (older runs): their train_flops" in note

    assert compare([str(runs), "--out", str(tmp_path / "b"), "--plot"]) == 0
    assert "theoretical" in plotted["xlabel"]
    assert plotted["x"] == pytest.approx([flops["er"], flops["finetune"]])
    assert "train_flops_dense" not in capsys.readouterr().out

    with pytest.raises(SystemExit) as bad:
        compare([str(runs), "--plot", "--flops", "dense"])
    assert bad.value.code == 2 and "--flops" in capsys.readouterr().err
