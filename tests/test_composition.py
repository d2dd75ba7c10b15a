"""The composition contract: every method preset x every plugin preset either runs with the
plugin's effect observable, or is refused at build with a message naming both (README
"Composition contract"); every method preset runs or refuses clearly under budget.match."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from cl_bench.build import build_parts, build_stream
from cl_bench.errors import ConfigError, user_error
from cl_bench.methods.base import Method
from cl_bench.plugins.base import Plugin
from conftest import REPO, compose_config, data_root

CONF = REPO / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
PLUGINS = sorted(p.stem for p in (CONF / "plugin").glob("*.yaml"))
# the settings each method preset needs on 8x8 digits besides its own (its model)
MODEL = {m: ["model=vit", "model.patch=4", "model.dim=16", "model.depth=4", "model.heads=2"]
         for m in ("l2p", "dualprompt", "coda_prompt")}
MODEL["twf"] = ["model=resnet18_reduced", "model.nf=4"]
SMALL = ["budget.batch_size=8", "budget.iters=3", "eval.every=0", "model.hidden=[32]",
         "memory.size=40"]
# a plugin preset that needs another one is composed with it, in the order it needs
WITH = {"gradient_mask": ["sparsity", "gradient_mask"], "ebll": ["lwf", "ebll"]}
STEPS = 2


def method_config(method: str, *extra: str):
    overrides = [f"data.root={data_root()}", f"method={method}", *SMALL, *extra]
    if method in MODEL:
        overrides = [o for o in overrides if not o.startswith("model.hidden")] + MODEL[method]
    if method in ("ebm", "twf"):
        overrides = [o for o in overrides if not o.startswith("model.hidden")]
    cfg = compose_config(overrides)
    parts = [cfg.method._target_, *(node._target_ for node in cfg.plugins.values())]
    if any("class_il" not in get_class(t).supported_scenarios for t in parts):
        cfg = compose_config([*overrides, "scenario=task_il"])
    fast_importance(cfg.plugins)
    return cfg


def fast_importance(plugins) -> None:
    """Importance estimates (Fisher, MAS) on 16 samples instead of the whole task."""
    for node in plugins.values():
        for key in ("fisher_samples", "samples"):
            if key in node:
                node[key] = 16


@functools.cache
def plugin_nodes(plugin: str) -> dict:
    names = WITH.get(plugin, [plugin])
    cfg = compose_config([f"plugin=[{','.join(names)}]", "budget.iters=3"])
    fast_importance(cfg.plugins)
    return {n: OmegaConf.to_container(cfg.plugins[n], resolve=True) for n in names}


@functools.cache
def digits():
    return build_stream(compose_config([f"data.root={data_root()}"]))


def head(method) -> torch.Tensor | None:
    module = getattr(method.model, "head", None)
    weight = getattr(module, "weight", None)
    return None if weight is None else weight.detach().clone()


def spy(plugin: Plugin, record: dict) -> None:
    """Records what the plugin's replacing phases and loss returned."""
    for phase in ("loss", "classification_loss", "predict"):
        original = getattr(plugin, phase)

        def wrapped(*args, _phase=phase, _original=original, **kwargs):
            out = _original(*args, **kwargs)
            if out is not None and (not isinstance(out, dict) or out):
                record.setdefault(_phase, []).append(out)
            return out
        setattr(plugin, phase, wrapped)


def run_tasks(method, stream, n_tasks=2, each=None, record=None) -> list[dict]:
    """`n_tasks` tasks of `STEPS` batches of 8 through the runner's calls; each step's
    output, with the loss terms the spied plugin returned in it (`plugin_terms`)."""
    outs = []
    for task in stream.tasks[:n_tasks]:
        if each:
            each("before", task)
        method.begin_task(task)
        data = method.train_data(task)
        method.plan_task(STEPS)
        gen = torch.Generator().manual_seed(task.id)
        for _ in range(STEPS):  # as the budget: from the samples the plugins keep active
            active = method.active_samples(len(data))
            pool = torch.arange(len(data)) if active is None else active.nonzero().squeeze(1)
            idx = pool[torch.randperm(len(pool), generator=gen)[:8]]
            batch = data[idx]
            batch.sample = idx
            if record is not None:
                record["loss"] = []
            out = {"task": task.id, **method.observe(batch)}
            if record is not None:
                out["plugin_terms"] = {k: v.detach() for d in record["loss"] for k, v in d.items()}
            outs.append(out)
        if each:
            each("after", task)
        method.end_task(task)
    return outs


def effect(name: str, plugin: Plugin, method, record: dict, outs: list[dict],
           heads: dict, x, t) -> str | None:
    """Why the plugin's effect is not seen in this run (None: it is)."""
    if name in ("ewc", "si", "mas", "l2_pull", "imm", "lwf", "plwf", "ebll"):
        for out in (o for o in outs if o["task"] == 1):  # every step of the second task
            mine = out["plugin_terms"]
            terms = out.get("terms", {"": out["loss"]})  # one term: the loss itself
            if not mine or not all(torch.equal(terms.get(k, terms.get("")), v)
                                   for k, v in mine.items()):
                return "no loss term of the plugin in a step of the second task"
    elif name in ("soft_targets", "task_logit_mask"):
        if not record.get("classification_loss"):
            return "its classification loss never replaced the method's"
    elif name in ("nmc", "rank_update"):
        ids = t if method.predict_needs_task_ids else None
        if not torch.equal(method.predict(x, ids), plugin.predict(x, ids)):
            return "the prediction is not the plugin's"
        if not record.get("predict"):
            return "the plugin's prediction was never used"
    elif name == "class_mean_init":
        new = method.class_mask[1]
        if heads["before1"] is None or torch.equal(heads["before1"][new], heads["begun1"][new]):
            return "the new classes' output rows did not change at the task's start"
    elif name == "freeze_old_rows":
        old = method.class_mask[0]
        if not torch.equal(heads["begun1"][old], heads["after1"][old]):
            return "old classes' output rows moved"
    elif name == "lora":
        if not plugin.layers or any(layer.base.weight.requires_grad for layer in plugin.layers):
            return "no frozen base under a LoRA update"
    elif name in ("owm", "eowm"):
        if not any(free < layer.d - 1e-3 for layer, free in
                   zip(plugin.layers, plugin.free_dims(), strict=True)):
            return "no projector absorbed an input"
    elif name == "sparsity":
        for layer in plugin.layers.values():
            if float(layer.mask.float().mean()) >= 1 or \
                    float((layer.weight.detach() * (1 - layer.mask.float())).abs().sum()) != 0:
                return "a masked layer is dense or has weights outside its mask"
    elif name == "gradient_mask":
        if not plugin.kept:
            return "no gradient was masked"
    elif name == "freeze":
        if not heads["frozen0"] or not heads["frozen1"]:
            return "no block froze before a task's end"
    elif name == "data_removal":
        if not sum(plugin.removed.values()):
            return "no sample was removed"
    elif name == "sieve":
        if plugin.mask is None or bool(plugin.mask.all()):
            return "every sample stayed active"
    else:
        return f"no effect check for plugin {name}: add one to tests/test_composition.py"
    return None


def run_pair(method_name: str, plugin_name: str, base_cfg, tmp_path) -> tuple[str, str]:
    """('run', '') with the effect seen, ('refused', message), or ('silent', why)."""
    cfg, nodes = base_cfg, plugin_nodes(plugin_name)
    saved = copy.deepcopy(cfg.plugins), cfg.scenario  # small: the plugins only
    own = [get_class(cfg.method._target_), *(get_class(n._target_)
                                              for n in cfg.plugins.values())]
    added = [get_class(n["_target_"]) for n in nodes.values()]
    try:
        with open_dict(cfg):  # the pair's config in place (a copy per pair is slow)
            for key, node in nodes.items():
                cfg.plugins[key] = node
            # task-IL where the preset, or else the plugin, supports only that
            if any("class_il" not in part.supported_scenarios for part in own) or (
                    any("class_il" not in part.supported_scenarios for part in added)
                    and all("task_il" in part.supported_scenarios for part in own)):
                cfg.scenario = "task_il"  # the preset's scenario wins: the plugin is refused
        torch.manual_seed(0)
        parts = build_parts(cfg, tmp_path, stream=digits())
    except Exception as err:
        if not isinstance(user_error(err), ConfigError):
            raise
        return "refused", str(user_error(err))
    finally:
        with open_dict(cfg):
            cfg.plugins, cfg.scenario = saved
    method = parts.method
    plugin = next(p for p in method.plugins if p.name == plugin_name)
    record, heads = {}, {}
    spy(plugin, record)
    stream = digits()
    if plugin.predict_needs_task_ids:
        assert method.predict_needs_task_ids

    def each(when, task):
        if task.id == 1:
            heads["before1" if when == "before" else "after1"] = head(method)
        if when == "after" and plugin_name == "freeze":  # it thaws at the task's end
            heads[f"frozen{task.id}"] = len(plugin.frozen)

    tasks = [t.to(parts.device) for t in stream.tasks]
    stream_view = type("S", (), {"tasks": tasks})
    original_begin = method.before_task

    def before_task(task, _original=original_begin):  # the rows the plugins' begin_task left
        if task.id == 1:
            heads["begun1"] = head(method)
        _original(task)
    method.before_task = before_task
    outs = run_tasks(method, stream_view, each=each, record=record)
    test = tasks[1]
    x = method.preprocess(test.test_x[:16])
    t = torch.full((16,), 1)
    method.model.eval()
    with torch.no_grad():
        logits = method.predict(x, t if method.predict_needs_task_ids else None)
    assert logits.shape == (16, stream.n_classes)
    why = effect(plugin_name, plugin, method, record, outs, heads, x, t)
    return ("silent", why) if why else ("run", "")


def test_every_method_preset_with_every_plugin_runs_with_effect_or_is_refused(tmp_path):
    counts, silent, unnamed = {"run": 0, "refused": 0}, [], []
    for method in METHODS:
        base = method_config(method)
        for plugin in PLUGINS:
            outcome, detail = run_pair(method, plugin, base, tmp_path)
            if outcome == "silent":
                silent.append(f"{method} x {plugin}: {detail}")
                continue
            counts[outcome] += 1
            if outcome == "refused" and not (f"method={method}" in detail and any(
                    name in detail for name in WITH.get(plugin, [plugin]))):
                unnamed.append(f"{method} x {plugin}: {detail}")
    (tmp_path / "matrix.json").write_text(json.dumps(counts))
    print(f"method x plugin pairs: {counts['run']} run, {counts['refused']} refused")
    assert not silent, "\n".join(silent)
    assert not unnamed, "\n".join(unnamed)
    assert counts["run"] + counts["refused"] == len(METHODS) * len(PLUGINS)
    assert counts["run"] > counts["refused"]


def test_an_entry_point_cannot_be_overridden():
    with pytest.raises(TypeError, match="Skipper.predict overrides Method.predict"):
        type("Skipper", (Method,), {"predict": lambda self, x, task_ids=None: x})


def test_two_plugins_replacing_the_prediction_are_refused_naming_both(tmp_path):
    cfg = compose_config([f"data.root={data_root()}", "plugin=[nmc,rank_update]",
                          "scenario=task_il", *SMALL])
    with pytest.raises(Exception) as raised:
        build_parts(cfg, tmp_path, stream=digits())
    assert isinstance(user_error(raised.value), ConfigError)
    assert "plugins nmc and rank_update both replace the prediction" in str(raised.value)


def test_the_model_head_alias_is_the_nmc_plugin(tmp_path):
    alias = build_parts(compose_config([f"data.root={data_root()}", "method=er",
                                        "model.head=nmc", *SMALL]), tmp_path, digits())
    plugin = build_parts(compose_config([f"data.root={data_root()}", "method=er",
                                         "plugin=[nmc]", *SMALL]), tmp_path, digits())
    for parts in (alias, plugin):
        (nmc,) = parts.method.plugins
        assert nmc.name == "nmc" and nmc.bank_size == 500


def reference_run(tmp_path: Path, tasks: int = 5, flops_per_task: int = 5_000_000) -> Path:
    """A completed reference run directory whose tasks each spent `flops_per_task`."""
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "summary.json").write_text(json.dumps({"status": "completed"}))
    (ref / "acc_matrix.csv").write_text("train_task,eval_task,accuracy\n" + "".join(
        f"{t},0,0.5\n" for t in range(tasks)))
    (ref / "train.csv").write_text("step,train_task,loss,flops_cumulative,seconds\n" + "".join(
        f"{t + 1},{t},1.0,{(t + 1) * flops_per_task},0.1\n" for t in range(tasks)))
    return ref


def test_budget_match_runs_or_refuses_clearly_for_every_method_preset(tmp_path):
    ref = reference_run(tmp_path)
    refused, ran = [], []
    for method in METHODS:
        cfg = method_config(method, f"budget.match={ref}", "budget.iters=null")
        torch.manual_seed(0)
        try:
            parts = build_parts(cfg, tmp_path, stream=digits())
        except ConfigError as err:
            assert f"method={method}" in str(err) or "plugin " in str(err), str(err)
            assert "budget.match" in str(err) and "budget.iters" in str(err), str(err)
            refused.append(method)
            continue
        m, budget = parts.method, parts.budget
        for task in [t.to(parts.device) for t in digits().tasks[:2]]:
            m.begin_task(task)
            data = m.train_data(task)
            steps = budget.steps_per_task(len(data))
            assert steps is None
            m.plan_task(steps)
            n = 0
            for idx in budget.batches(len(data), torch.Generator().manual_seed(0),
                                      parts.device, task.id, m.active_samples,
                                      m.active_version):
                batch = data[idx]
                batch.sample = idx
                m.observe(batch)
                n += 1
            assert n >= 1 or task.id  # a method may spend task 1's FLOPs in its task 0 end
            m.end_task(task)
        ran.append(method)
    print(f"budget.match: {len(ran)} method presets run, {len(refused)} refused: {refused}")
    assert set(refused) >= {"packnet", "cps", "nispa"}
    assert "er" in ran and "derpp" in ran


def test_a_planned_steps_reader_fails_clearly_when_none_are_planned():
    from cl_bench.contract import RunContext

    ctx = RunContext("hat")
    ctx.task_steps = None
    with pytest.raises(ConfigError, match="method=hat schedules by the task's planned steps"):
        ctx.planned_steps()


@pytest.mark.parametrize("plugins, message", [
    ("[gradient_mask]", "gradient_mask needs plugin sparsity listed before it"),
    ("[ewc,rank_update]", "ewc needs the same trainable parameters in every task, and plugin "
                          "rank_update takes that away"),
    ("[lora,sparsity]", "plugins lora and sparsity both replace the model's layers"),
])
def test_plugins_that_exclude_each_other_are_refused_naming_both(tmp_path, plugins, message):
    cfg = compose_config([f"data.root={data_root()}", f"plugin={plugins}",
                          "scenario=task_il", *SMALL])
    with pytest.raises(Exception) as raised:
        build_parts(cfg, tmp_path, stream=digits())
    assert isinstance(user_error(raised.value), ConfigError)
    assert message in str(raised.value)
