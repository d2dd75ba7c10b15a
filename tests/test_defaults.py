"""One source of defaults (issue 28): a part's schema dataclass holds its defaults; the yaml
of an option states only where it deviates from them, each deviation with a comment naming
its source; a part built in Python with no options is the part the CLI builds from the
option with no overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class
from omegaconf import ListConfig, OmegaConf
from torch import nn

from cl_bench.cli import CONF_DIR
from cl_bench.experiment import build_parts, instantiate_part
from cl_bench.models.pretrained import RUNNER_KEYS
from cl_bench.schemas import SCHEMAS, defaults_from, schema_defaults
from conftest import compose_config, data_root

GROUPS = ("method", "memory", "model", "plugin", "budget", "benchmark", "stream", "eval",
          "logger", "optimizer")
OPTIONS = [f"{g}/{p.stem}" for g in GROUPS for p in sorted(Path(CONF_DIR, g).glob("*.yaml"))]
NOT_STATED = {"_target_", "name", "defaults"}


def composed_node(group: str, option: str):
    if group == "plugin":
        return compose_config([f"plugin=[{option}]"]).plugins[option]
    # method=er: no published protocol (experiment/split_cifar100_mlp_*) merges into it
    return compose_config([f"{group}={option}", *(["method=er"] * (group == "benchmark"))])[group]


def stated(path: Path, node_path: list[str]) -> dict:
    """The keys (with their raw values) the option's yaml itself states at `node_path`."""
    node = yaml.safe_load(path.read_text()) or {}
    for key in node_path:
        node = node.get(key) or {}
    return {k: v for k, v in node.items() if k not in NOT_STATED}


def deviations(node, conf: type) -> set[str]:
    """The keys of a composed node whose value is not the schema's default (a default that
    is an interpolation, resolved only in a composed config, counts as kept)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(conf), resolve=False)
    own = OmegaConf.to_container(node, resolve=True)
    return {k for k, v in own.items() if k not in NOT_STATED and defaults.get(k) != v
            and "${" not in str(defaults.get(k))}


def undocumented(path: Path, node_path: list[str], node, conf: type) -> list[str]:
    """What the option's yaml gets wrong at `node_path`: a deviation from the schema it does
    not state, a stated value that repeats the schema, a deviation without a comment."""
    text = path.read_text()
    said = stated(path, node_path)
    defaults = OmegaConf.to_container(OmegaConf.structured(conf), resolve=False)
    changed = deviations(node, conf)
    # every value that differs from the schema's is stated by the option's own yaml
    problems = [f"{path.name}: {key} differs from the schema but is not stated"
                for key in sorted(changed - set(said))]
    for key, value in said.items():
        # ... and nothing it states merely repeats the schema (an interpolation wires a
        # value in: `seed: ${seed}`), and each deviation says where it comes from
        if key not in changed and not (isinstance(value, str) and "${" in value):
            problems.append(f"{path.name}: {key} repeats the schema")
        elif defaults.get(key) != "???":  # a mandatory key: what the option is (its dataset)
            line = re.search(rf"^\s*{key}:[^\n]*", text, re.M).group(0)
            if "#" not in line:
                problems.append(f"{path.name}: {key}={value} has no comment naming its source")
    return problems


def check_stated(path: Path, node_path: list[str], node, conf: type) -> None:
    problems = undocumented(path, node_path, node, conf)
    assert not problems, "; ".join(problems)


def schema_of(path: Path) -> type:
    group, name = re.search(r"/schema/(\w+)/(\w+)@", path.read_text()).groups()
    return SCHEMAS[(group, name)]


@pytest.mark.parametrize("option", OPTIONS)
def test_yaml_states_only_documented_deviations(option):
    group, name = option.split("/")
    path = Path(CONF_DIR, group, f"{name}.yaml")
    node = composed_node(group, name)
    problems = undocumented(path, ["method"] if group == "method" else [], node,
                            schema_of(path))
    if group == "method":  # a preset over plugins: their deviations are documented too
        cfg = compose_config([f"method={name}"])
        for plugin, plugin_node in cfg.plugins.items():
            conf = schema_of(Path(CONF_DIR, "plugin", f"{plugin}.yaml"))
            problems += undocumented(path, ["plugins", plugin], plugin_node, conf)
    assert problems == []


def test_the_check_catches_a_restated_and_an_undocumented_value(tmp_path):
    from cl_bench.plugins.ewc import EWCConf

    node = OmegaConf.merge(OmegaConf.structured(EWCConf), {"strength": 5.0, "gamma": 1.0})
    bad = tmp_path / "ewc.yaml"
    bad.write_text("strength: 5.0\n")
    with pytest.raises(AssertionError, match="no comment"):
        check_stated(bad, [], node, EWCConf)
    bad.write_text("strength: 5.0  # ours\ngamma: 1.0  # restated\n")
    with pytest.raises(AssertionError, match="repeats the schema"):
        check_stated(bad, [], node, EWCConf)


def test_defaults_from_fills_what_a_call_leaves_out():
    from dataclasses import dataclass

    @dataclass
    class Conf:
        _target_: str = "x"
        a: int = 1
        b: list = None

    @defaults_from(Conf)
    class Part:
        def __init__(self, first, a, b):
            self.first, self.a, self.b = first, a, b

    part = Part(0)
    assert (part.first, part.a, part.b) == (0, 1, None)
    assert Part(0, 5).a == 5 and Part(0, b=[2]).b == [2]  # given ones are kept
    assert schema_defaults(Conf) == {"a": 1, "b": None}


def plain(obj) -> dict:
    """What two builds of a part must agree on: its plain attributes, tensors and modules."""
    out = {}
    for key, value in vars(obj).items():
        if isinstance(value, ListConfig):  # Hydra's instantiate passes lists as ListConfig
            value = OmegaConf.to_container(value)
        if isinstance(value, (int, float, str, bool, type(None))) or (
                isinstance(value, (list, tuple)) and all(
                    isinstance(v, (int, float, str, bool, type(None))) for v in value)):
            out[key] = value
        elif isinstance(value, torch.Tensor):  # (buffers may be uninitialised)
            out[key] = (tuple(value.shape), value.dtype)
        elif isinstance(value, nn.Module):
            out[key] = {k: v.tolist() for k, v in value.state_dict().items()}
    return out


def without_options(cfg, node: str):
    """`cfg` with the option at `node` reduced to its class: what a Python caller passes."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    part = raw
    for key in node.split("."):
        part = part[key]
    for key in [k for k in part if k not in ("_target_", "name")]:
        del part[key]
    return OmegaConf.create(raw)


METHODS = sorted(p.stem for p in Path(CONF_DIR, "method").glob("*.yaml"))
NEEDS = {"l2p": ["model=vit"], "dualprompt": ["model=vit"], "coda_prompt": ["model=vit"],
         "twf": ["model=resnet18_reduced", "benchmark=split_mnist"],
         "hat": ["scenario=task_il"], "packnet": ["scenario=task_il"],
         "cps": ["scenario=task_il"], "rank_update": ["scenario=task_il"],
         "supsup": ["scenario=task_il"], "exssnet": ["scenario=task_il"],
         "wsn": ["scenario=task_il"], "softnet": ["scenario=task_il"]}


@pytest.mark.parametrize("method", METHODS)
def test_a_method_built_in_python_is_the_cli_s(method, tmp_path):
    if "benchmark=split_mnist" in NEEDS.get(method, []) and not (data_root() / "MNIST").is_dir():
        pytest.skip("needs MNIST")
    cfg = compose_config([f"method={method}", f"data.root={data_root()}",
                          *NEEDS.get(method, [])])
    builds = []
    for c in (cfg, without_options(cfg, "method")):
        torch.manual_seed(0)
        builds.append(build_parts(c, tmp_path).method)
    assert plain(builds[0]) == plain(builds[1])
    assert plain(builds[0].model) == plain(builds[1].model)


# conv5_frozen: in Python `weights=None` (a random extractor); the yaml's default, a file
# under `weights.root`, exists only in a composed config
@pytest.mark.parametrize("option", [o for o in OPTIONS if o.split("/")[0] in
                                    ("memory", "plugin", "model", "budget")
                                    and o != "model/conv5_frozen"])
def test_a_part_built_in_python_is_the_cli_s(option, tmp_path):
    group, name = option.split("/")
    node = composed_node(group, name)
    cls = get_class(node._target_)
    runner = {"memory": dict(device="cpu", seed=0), "plugin": {}, "budget": {},
              "model": dict(input_shape=(3, 32, 32), n_classes=10)}[group]
    if getattr(cls, "stores_files", False):
        runner["run_dir"] = str(tmp_path)
    keys = RUNNER_KEYS if group == "model" else ("name",)
    torch.manual_seed(0)
    cli = instantiate_part(node, keys, **runner)
    torch.manual_seed(0)
    python = cls(**runner)
    assert plain(python) == plain(cli)
