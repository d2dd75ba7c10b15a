"""Continual-evaluation metrics against hand-made curves, and their place in a run."""

import math

import pandas as pd
import pytest
import torch

from cl_bench.metrics.stability import largest_change, scenario_metrics, stability_metrics

# task 0 trains steps 1-4, task 1 steps 5-9; one evaluation per step
TASK0 = [0.5, 0.7, 0.8, 0.9, 0.4, 0.3, 0.6, 0.88, 0.9]
TASK1 = [0.2, 0.5, 0.7, 0.8, 0.85]


def rows_from(series: list[list[float]], task_of_step: list[int]) -> list[dict]:
    rows = []
    for i, task in enumerate(task_of_step):
        for j in range(task + 1):
            first = task_of_step.index(j)
            rows.append({"step": i + 1, "train_task": task, "eval_task": j,
                         "acc_class_il": series[j][i - first]})
    return rows


def two_task_metrics(**kw):
    return scenario_metrics(rows_from([TASK0, TASK1], [0] * 4 + [1] * 5), "class_il", **kw)


def test_min_and_worst_case_accuracy():
    m = two_task_metrics()
    assert m["min_acc_t0_class_il"] == pytest.approx(0.3)
    assert m["min_acc_class_il"] == pytest.approx(0.3)
    # current task's final accuracy and the other task's min-ACC
    assert m["wc_acc_class_il"] == pytest.approx((0.85 + 0.3) / 2)


def test_gap_depth_minimum_and_recovery():
    m = two_task_metrics()
    assert m["gap_depth_class_il"] == pytest.approx(0.9 - 0.3)
    assert m["gap_iters_to_min_class_il"] == 2  # from step 4 to step 6
    assert m["gap_iters_to_recover_class_il"] == 4  # 0.88 >= 0.95 * 0.9 at step 8
    assert m["gap_recovered_class_il"] == 1.0


def test_windowed_forgetting_and_plasticity():
    assert largest_change([0.9, 0.4, 0.3, 0.6], 2, rise=False) == pytest.approx(0.5)
    assert largest_change([0.9, 0.4, 0.3, 0.6], 3, rise=False) == pytest.approx(0.6)
    assert largest_change([0.5, 0.4], 10, rise=True) == 0.0
    m = two_task_metrics(windows=(2, 10))
    # task 0 from its last own evaluation: 0.9 0.4 0.3 0.6 0.88 0.9
    assert m["wf2_class_il"] == pytest.approx(0.5)
    assert m["wf10_class_il"] == pytest.approx(0.6)
    # rises while learning: task 0 0.5->0.9 (adjacent 0.2), task 1 0.2->0.85 (adjacent 0.3)
    assert m["wp2_class_il"] == pytest.approx((0.2 + 0.3) / 2)
    assert m["wp10_class_il"] == pytest.approx((0.4 + 0.65) / 2)


def test_learning_curve_area():
    m = two_task_metrics(beta=2)
    assert m["lca2_class_il"] == pytest.approx(((0.5 + 0.7) / 2 + (0.2 + 0.5) / 2) / 2)


def test_a_gap_that_never_recovers_and_later_switches():
    # three tasks of two steps; task 0 collapses at the first switch and stays low
    t0, t1, t2 = [0.8, 1.0, 0.2, 0.5, 0.6, 0.7], [0.6, 0.8, 0.4, 0.8], [0.5, 0.9]
    m = scenario_metrics(rows_from([t0, t1, t2], [0, 0, 1, 1, 2, 2]), "class_il")
    assert math.isnan(m["gap_iters_to_recover_t0_class_il"])
    assert m["gap_depth_t0_class_il"] == pytest.approx(0.8)
    assert m["gap_iters_to_recover_t1_class_il"] == 2  # task 1: 0.8 -> 0.4 -> 0.8
    assert m["gap_recovered_class_il"] == 0.5
    assert m["gap_iters_to_recover_class_il"] == 2  # the mean over recovered gaps
    assert m["gap_depth_class_il"] == pytest.approx((0.8 + 0.4) / 2)
    assert m["min_acc_class_il"] == pytest.approx((0.2 + 0.4) / 2)
    assert m["wc_acc_class_il"] == pytest.approx((0.9 + 0.2 + 0.4) / 3)


def test_no_curves_no_metrics():
    assert stability_metrics([], ["class_il"]) == {}


def test_run_reports_stability_metrics_and_plot(run_job):
    summary, run_dir = run_job("eval.every=5", "eval.probe_size=50", "eval.plot=true")
    curves = pd.read_csv(run_dir / "curves.csv")
    expected = scenario_metrics(curves.to_dict("records"), "task_il")
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, nan_ok=True), key
    # finetune in class-IL drops the old task to nearly nothing after the switch
    assert summary["gap_depth_class_il"] > 0.5 > summary["gap_depth_task_il"]
    assert summary["min_acc_class_il"] < summary["min_acc_task_il"]
    assert summary["eval_every"] == 5 and summary["eval_probe_size"] == 50
    # overhead: continual-evaluation seconds over training seconds; test-set passes apart
    assert summary["eval_overhead"] == pytest.approx(
        summary["eval_seconds"] / summary["train_seconds"])
    assert summary["test_seconds"] > 0
    png = (run_dir / "stability_gap.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_plot_overlays_runs_on_one_axes():
    import matplotlib.pyplot as plt

    from cl_bench.report.stability_plot import plot_stability_gap

    curves = pd.DataFrame(rows_from([TASK0, TASK1], [0] * 4 + [1] * 5))
    fig, ax = plt.subplots()
    plot_stability_gap(curves, ax=ax, label="a")
    plot_stability_gap(curves.assign(acc_class_il=curves.acc_class_il / 2), ax=ax, label="b")
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("a", "b")]
    assert [len(ln.get_xdata()) for ln in lines] == [9, 9]
    assert max(lines[1].get_ydata()) == pytest.approx(45.0)  # percent, halved
    plt.close(fig)


@pytest.mark.slow  # heavier end-to-end check: pytest -m slow
def test_bf16_probes_change_curves_by_near_ties_only_and_never_the_test_sets(run_job):
    common = ["method=er", "eval.every=5", "eval.probe_size=100", "eval.plot=false",
              "deterministic=true"]
    fp32, fp32_dir = run_job(*common, "eval.precision=fp32")
    bf16, bf16_dir = run_job(*common, "eval.precision=bf16")
    assert (fp32["eval_precision"], bf16["eval_precision"]) == ("fp32", "bf16")
    pd.testing.assert_frame_equal(pd.read_csv(bf16_dir / "acc_matrix.csv"),
                                  pd.read_csv(fp32_dir / "acc_matrix.csv"))
    a, b = (pd.read_csv(d / "curves.csv") for d in (fp32_dir, bf16_dir))
    assert a.step.tolist() == b.step.tolist()
    assert (a.acc_class_il - b.acc_class_il).abs().max() <= 0.03  # 3 of 100 probes at most
    assert abs(fp32["min_acc_class_il"] - bf16["min_acc_class_il"]) <= 0.03


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    from cl_bench.metrics.evaluator import resolve_precision

    for isa in ("avx512_bf16", "amx_tile"):
        monkeypatch.setattr(torch.cpu, f"_is_{isa}_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: kept
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_bad_eval_precision_is_named(run_job):
    with pytest.raises(ValueError, match="eval.precision='fp16'"):
        run_job("eval.precision=fp16", "budget.epochs=null", "budget.iters=2")
