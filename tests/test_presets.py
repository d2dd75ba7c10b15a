"""Method presets at the defaults: every preset completes with a finite loss on each main
benchmark or is refused at build naming the override that fixes it; a preset tuned with
another optimizer picks it, and its values follow the run's benchmark and scenario (README
"Method presets")."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from cl_bench.config import tuned_optimizer
from cl_bench.errors import user_error
from cl_bench.experiment import run_experiment
from conftest import REPO, compose_config, data_root, has_dataset

METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
# a refusal names its fix: "run it with scenario=task_il", "use model=resnet18_reduced"
FIX = re.compile(r"(?:run (?:it|them) with|use) [\w.]+=\S+")
TUNED = {m: tuned_optimizer(m) for m in METHODS}


def run_preset(method: str, benchmark: str, tmp_path, iters: int, *extra: str):
    """("completed", run_dir) or ("refused", message); anything else fails the test."""
    cfg = compose_config([f"data.root={data_root()}", f"method={method}",
                          f"benchmark={benchmark}", f"budget.iters={iters}", "eval.every=0",
                          "logger.console=false", *extra])
    try:
        run_experiment(cfg, tmp_path / "run")
    except FloatingPointError:  # a divergence fails the test, whatever its message says
        raise
    except Exception as err:
        known = user_error(err)
        if known is None:  # a bug
            raise
        return "refused", str(known)
    return "completed", tmp_path / "run"


def check_cell(method, benchmark, tmp_path, iters):
    kind, out = run_preset(method, benchmark, tmp_path, iters)
    if kind == "refused":
        assert FIX.search(out), f"method={method} on {benchmark} is refused without a fix: {out}"
    else:
        losses = pd.read_csv(out / "train.csv")["loss"]
        assert len(losses) and all(math.isfinite(v) for v in losses)
    return kind


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_completes_or_names_its_fix_on_digits(method, tmp_path):
    assert check_cell(method, "digits", tmp_path, iters=30) in ("completed", "refused")


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["split_mnist", "permuted_mnist", "split_cifar100"])
@pytest.mark.parametrize("method", METHODS)
def test_every_preset_completes_or_names_its_fix_on_the_main_benchmarks(method, benchmark,
                                                                        tmp_path):
    if not has_dataset("CIFAR100" if benchmark == "split_cifar100" else "MNIST"):
        pytest.skip(f"{benchmark}'s data not found under {data_root()}")
    assert check_cell(method, benchmark, tmp_path, iters=30) in ("completed", "refused")


def test_presets_pick_the_optimizer_their_values_were_tuned_with():
    assert {m for m, o in TUNED.items() if o} >= {"ewc", "online_ewc", "si", "mas"}
    for method, tuned in TUNED.items():
        cfg = compose_config([f"method={method}"])
        expected = {"adam": "torch.optim.Adam", None: "torch.optim.SGD"}[tuned]
        assert cfg.optimizer._target_ == expected, method
    # the command line wins; a published protocol's preset keeps its own
    assert compose_config(["method=ewc", "optimizer=sgd"]).optimizer._target_ == \
        "torch.optim.SGD"
    assert compose_config(["benchmark=split_cifar100", "method=plr"]).optimizer._target_ == \
        "torch.optim.Adam"
    three = compose_config(["experiment=three_scenarios_permuted", "method=ewc"])
    assert (three.optimizer._target_, three.optimizer.lr) == ("torch.optim.Adam", 1e-4)


@pytest.mark.parametrize("overrides, strength", [
    (["benchmark=split_mnist"], 1e9),                       # class-IL, the default
    (["benchmark=split_mnist", "scenario=task_il"], 1e5),
    (["benchmark=split_mnist", "scenario=domain_il"], 1e10),
    (["benchmark=permuted_mnist"], 100.0),                  # every scenario
    (["benchmark=digits", "scenario=task_il"], 1e5),        # any other benchmark: split MNIST's
])
def test_regularisation_values_follow_benchmark_and_scenario(overrides, strength):
    for method in ("ewc", "online_ewc"):
        assert compose_config([f"method={method}", *overrides]).plugins.ewc.strength == strength
    si = {1e9: 5e3, 1e5: 10.0, 1e10: 5e4, 100.0: 10.0}[strength]
    assert compose_config(["method=si", *overrides]).plugins.si.strength == si


def test_a_diverged_run_names_the_optimizer_its_preset_was_tuned_with(tmp_path):
    with pytest.raises(FloatingPointError, match="use optimizer=adam: method=ewc's values"):
        run_preset("ewc", "digits", tmp_path, 60, "optimizer=sgd")


def test_readme_states_each_presets_optimizer_and_source():
    """README "Method presets" has a row per preset naming the optimizer it runs with."""
    text = (REPO / "README.md").read_text()
    section = re.split(r"\n##+ ", text.split("### Method presets", 1)[1], maxsplit=1)[0]
    rows = {name.strip(" `"): line for line in section.splitlines() if line.startswith("| `")
            for name in line.split("|")[1].split(",")}
    assert set(rows) == set(METHODS)
    for method, tuned in TUNED.items():
        assert f"`{tuned or 'sgd'}`" in rows[method], method
