"""The composition contract of methods and plugins (README "Composition contract"): the
runner's context, the entry points no subclass overrides, and the needs and provisions
checked before training.

What a method provides to plugins (`Method.provides`, plus two read off its class):
  `class_logits`    `method.model(x)` returns logits over every class (not an energy net);
  `step_logits`     the step's first `forward` starts with the current batch, so plugins
                    get its logits (`Method.batch_logits`);
  `cross_entropy`   its classification loss goes through `Method.cross_entropy`, so a
                    plugin's `classification_loss` takes effect;
  `base_prediction` it predicts with its model's output (no `predict_logits` of its own),
                    so a plugin may replace the prediction;
  `plain_model`     it does no model surgery (no `wrap_model` of its own), so a plugin may
                    replace or mask layers and decide which parameters train;
  `steady_parameters` the set of trainable parameters does not change from task to task
                    (importance-weighted regularisers key their state by it).
What a plugin needs of its method is `Plugin.needs` (a subset of the above), of the other
plugins `Plugin.needs_plugins` (names listed before it), and of the run `needs` with
`planned_steps` (the task's planned number of steps, which `budget.match` does not fix) or
`fixed_steps` (it trains outside its steps, so `budget.match` cannot size its tasks). A
plugin may take a provision away for the others (`Plugin.removes`), and at most one plugin
does model surgery (`wrap_model`), replaces the prediction or the classification loss.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from cl_bench.errors import ConfigError
from cl_bench.schemas import SCHEMAS

PROVISIONS = ("class_logits", "step_logits", "cross_entropy", "base_prediction",
              "plain_model", "steady_parameters")
METHOD_DEFAULT = frozenset({"class_logits", "step_logits", "cross_entropy",
                            "steady_parameters"})
METHOD_ENTRY_POINTS = ("begin_task", "observe", "end_task", "skip_task", "predict",
                       "reveal_task_ids", "see_labels", "cross_entropy", "plan_task")
WHY = {
    "class_logits": "its model does not return class logits",
    "step_logits": "its steps give no logits of the current batch",
    "cross_entropy": "its loss does not go through Method.cross_entropy",
    "base_prediction": "it predicts with its own rule (predict_logits)",
    "plain_model": "it replaces or masks the model's layers itself (wrap_model)",
    "steady_parameters": "it changes which parameters train from task to task",
}
WANTS = {
    "class_logits": "the model's class logits",
    "step_logits": "the logits of each step's training batch",
    "cross_entropy": "to replace the classification loss",
    "base_prediction": "to replace the prediction",
    "plain_model": "to replace or mask the model's layers and choose what trains",
    "steady_parameters": "the same trainable parameters in every task",
}


class RunContext:
    """What the runner tells a method beyond the phases' arguments, and what a step tells
    the plugins (one per method, `method.ctx`):

    * `task_steps`: planned steps of the current task (None under `budget.match`; read it
      through `planned_steps()`, which then fails with the fix);
    * the step's current-batch logits (`record_logits`, `batch_logits`) and the last
      forward `(x, inputs, logits)` (`Method.forward_of`), both freed after the step;
    * `log`: numbers the step logs beside its loss terms (train.csv columns by name,
      averaged over the steps that set them; device tensors, no host sync);
    * `artifacts`: the run directory's file sink (`cl_bench.loggers.artifacts`);
    * `inner`: the optimisation step within the batch (`Method.steps_per_batch`).
    """

    def __init__(self, owner: str = ""):
        from cl_bench.loggers.artifacts import Artifacts

        self.owner = owner
        self.task_steps: int | None = 0
        self.logits: torch.Tensor | None = None
        self.last_forward: tuple | None = None
        self.log: dict[str, torch.Tensor] = {}
        self.artifacts = Artifacts()
        self.inner = 0

    def planned_steps(self, who: str = "") -> int:
        if self.task_steps is None:
            raise ConfigError(
                f"{who or f'method={self.owner}'} schedules by the task's planned steps, "
                "and budget.match plans none (each task runs until the reference's FLOPs): "
                "set budget.epochs or budget.iters instead")
        return self.task_steps

    def start_step(self) -> None:
        self.logits = None
        self.log = {}

    def record_logits(self, logits: torch.Tensor) -> None:
        """The step's first forward: its logits start with the current batch's."""
        if self.logits is None:
            self.logits = logits.detach()

    def batch_logits(self, n: int) -> torch.Tensor | None:
        return None if self.logits is None else self.logits[:n]


def check_final(cls, base, names) -> None:
    """A subclass of `base` defining one of the entry points `names` is a TypeError: the
    entry points run the plugins, and an override could skip them."""
    for name in names:
        if name in cls.__dict__:
            raise TypeError(f"{cls.__name__}.{name} overrides {base.__name__}.{name}, an "
                            "entry point that runs the plugins; override its phase instead "
                            "(README: Composition contract)")


def provisions(method) -> set[str]:
    """What `method` provides to plugins: its declared `provides` and what its class
    shows (no `predict_logits` or `wrap_model` of its own)."""
    own = set(method.provides)
    cls = type(method)
    # the base class's own phases (by name: this module is below methods/ in the imports)
    if cls.predict_logits.__qualname__ == "Method.predict_logits":
        own.add("base_prediction")
    if cls.wrap_model.__qualname__ == "Method.wrap_model":
        own.add("plain_model")
    return own


def plugin_name(plugin) -> str:
    """The plugin's config name (`plugins.<name>`, set by the runner), else the name its
    schema is registered under (a plugin built in Python), else its class name in snake
    case."""
    name = getattr(plugin, "name", None)
    if name:
        return name
    conf = getattr(type(plugin), "schema", None)
    registered = [n for (group, n), c in SCHEMAS.items() if group == "plugin" and c is conf]
    if registered:
        return registered[0]
    cls = type(plugin).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower()
                   for i, c in enumerate(cls))


@contextmanager
def naming(method, *plugins):
    """A plugin's (or, after the plugins', the method's) refusal of its setup or model
    surgery as a ConfigError naming the method and the plugins involved."""
    try:
        yield
    except (ConfigError, ValueError) as err:
        if not plugins or (f"method={method.name}" in str(err)
                           and all(plugin_name(p) in str(err) for p in plugins)):
            raise
        names = ", ".join(plugin_name(p) for p in plugins)
        raise ConfigError(f"method={method.name} with plugin {names}: {err}") from err


def check_pairs(method) -> None:
    """Fails (before any model surgery) where a plugin needs what its method does not
    provide, a plugin another that is not listed before it, or two plugins replace the
    same thing; one message names both parts, the reason and the nearest working
    choice."""
    have = provisions(method)
    names = [plugin_name(p) for p in method.plugins]
    for i, plugin in enumerate(method.plugins):
        name = names[i]
        for need in sorted((plugin.needs & set(PROVISIONS)) - have):
            raise ConfigError(
                f"method={method.name} cannot take plugin {name}: the plugin needs "
                f"{WANTS[need]}, and {WHY[need]}. Nearest working choice: "
                f"{plugin.nearest or 'drop plugin ' + name}")
        for other, taker in zip(names, method.plugins, strict=True):
            for need in sorted(plugin.needs & taker.removes if taker is not plugin else ()):
                raise ConfigError(
                    f"method={method.name} with plugin {name}: {name} needs {WANTS[need]}, "
                    f"and plugin {other} takes that away ({WHY[need].removeprefix('it ')}); "
                    f"drop one of them")
        for other in plugin.needs_plugins:
            if other not in names[:i]:
                raise ConfigError(
                    f"method={method.name} with plugin {name}: {name} needs plugin {other} "
                    f"listed before it: plugin=[{other},{name}]")
    for phase, what in (("predict", "the prediction"),
                        ("classification_loss", "the classification loss"),
                        ("wrap_model", "the model's layers (model surgery)")):
        replacing = [n for p, n in zip(method.plugins, names, strict=True)
                     if getattr(type(p), phase).__qualname__ != f"Plugin.{phase}"]
        if len(replacing) > 1:
            raise ConfigError(
                f"method={method.name}: plugins {replacing[0]} and {replacing[1]} both "
                f"replace {what}, and only one can; drop one of them")


def check_planned_steps(method, planned: bool, why: str) -> None:
    """Fails before training where the method or a plugin needs the task's planned steps
    and the budget (`why`) plans none."""
    if planned:
        return
    parts = [(f"method={method.name}", method.needs)]
    parts += [(f"plugin {plugin_name(p)}", p.needs) for p in method.plugins]
    for part, needs in parts:
        if "planned_steps" in needs:
            raise ConfigError(
                f"{part} schedules by the task's planned steps, and {why} plans none (each "
                "task runs until the reference's FLOPs): set budget.epochs or budget.iters "
                "instead, or choose a method that does not schedule within a task")
        if "fixed_steps" in needs:
            raise ConfigError(
                f"{part} trains outside its steps (their FLOPs cannot reach a reference's), "
                f"so {why} cannot size its tasks: set budget.epochs or budget.iters instead")
