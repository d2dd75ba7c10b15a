"""The method kernel: a few named phases around one optimisation step, which the base owns."""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench import contract
from cl_bench.budget.flops import FlopCounter
from cl_bench.contract import RunContext
from cl_bench.data.batch import Batch
from cl_bench.data.stream import Task
from cl_bench.data.transforms import Preprocess
from cl_bench.errors import ConfigError
from cl_bench.memory.base import Memory
from cl_bench.plugins.base import Plugin
from cl_bench.schemas import schema


@schema("method", "method")
@dataclass
class MethodConf:
    _target_: str = "???"
    name: str = "???"
    # the classification loss's softmax in class-IL: over every output (all) or over the
    # classes seen so far (seen: the "active classes" of van de Ven's code)
    outputs: str = "all"


class _BuildAfterInit(type):
    """Runs `Method._build` once the whole (subclass) constructor has run, so model
    surgery, the optimiser and the FLOP counter see every attribute a method sets."""

    def __call__(cls, *args, **kwargs):
        method = super().__call__(*args, **kwargs)
        method._build()
        return method


class Method(metaclass=_BuildAfterInit):
    """Base class of every method: owns the model, its optimiser, the memory, the plugins
    and the optimisation step.

    The runner calls only the entry points, which no subclass may override (checked when
    the class is defined): `begin_task`, `plan_task`, `observe`, `end_task`, `skip_task`,
    `predict`, `reveal_task_ids`, `see_labels`, and the helper `cross_entropy`. Each runs the
    method's phase and the plugins' in the order of the README's "Composition contract".

    Phases a method overrides (each optional):
      `wrap_model(model)`   model surgery (after the plugins'), before the optimiser is
                            built over the trainable parameters and the counter attaches;
      `before_task(task)`, `train_data(task)` (the batch the budget draws from),
      `loss(batch) -> {term: tensor}` (summed; each term logged as `loss_<term>`),
      `after_backward(batch)` (between backward and step: projections, gradient masks),
      `after_step(batch)` (memory updates, masks re-applied), `after_task(task)`,
      `resume_task(task)` (a task a resumed run had completed),
      `before_batch(batch)` / `after_batch(batch)` around the `steps_per_batch`
      optimisation steps of one batch (1; MMKDDA's inner steps),
      `predict_logits(x, task_ids=None)` (set `predict_needs_task_ids` to get task ids in
      task-IL), `loss_logits(logits, task_ids)` (the logits `cross_entropy` scores: in
      task-IL the sample's own task's classes), `see_task_ids(task_ids)` (the true task ids
      of the batch `predict` just scored, to score a task inference; never a prediction).
    What the runner tells the method beyond the phases' arguments, and what a step tells
    the plugins, is in `self.ctx` (a `RunContext`): the task's planned steps
    (`task_steps`), the step's logits of the current batch (`batch_logits`), the step's
    logged numbers (`ctx.log`) and the run directory's file sink (`ctx.artifacts`).
    A method declares the stream modes it runs in (`supported_streams`, see
    `cl_bench.data.modes`): `task_free` only where `before_task`/`after_task` do nothing
    it needs, since a task-free stream never calls them; there the runner tracks the
    classes seen from the batches' labels (`see_labels`) instead.
    A method declares the memory capabilities it needs in `memory_needs`, what it offers
    plugins in `provides` (see `cl_bench.contract`) and what it needs of the run in
    `needs` (e.g. `planned_steps`), all checked before training; it tags FLOPs with
    `self.flops(name)`, and may add auxiliary networks with their own optimiser
    (`add_auxiliary`), which the base steps with the model.
    """

    supported_scenarios: tuple[str, ...] = ("class_il", "task_il", "domain_il")
    supported_streams: tuple[str, ...] = ("task", "online", "blurry")
    memory_needs: frozenset[str] = frozenset()
    memory_hint = "choose e.g. memory=reservoir memory.size=500"  # the fix, when it lacks them
    predict_needs_task_ids = False
    provides: frozenset[str] = contract.METHOD_DEFAULT
    needs: frozenset[str] = frozenset()  # of the run: `planned_steps` (cl_bench.contract)
    steps_per_batch = 1  # optimisation steps per training batch
    # whether `state_dict` holds everything that changes within a task, so a run resumes
    # from a checkpoint inside one (`checkpoint.every_*`); False: from the task's start
    resumes_in_task = True
    inner_flops = "inner"  # FLOP component of a batch's steps after its first
    # constructor arguments that trade plasticity for stability (`clbench-tune` decays
    # them; config keys `method.<knob>`)
    stability_knobs: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        contract.check_final(cls, Method, contract.METHOD_ENTRY_POINTS)

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        memory: Memory,
        preprocess: Preprocess,
        class_mask: torch.Tensor,
        scenario: str,
        counter: FlopCounter | None = None,
        plugins: Sequence[Plugin] = (),
        name: str = "",
        outputs: str = "all",
    ):
        self.name = name or type(self).__name__.lower()
        if outputs not in ("all", "seen"):
            raise ConfigError(f"method.outputs={outputs!r}: choose all (the class-IL loss over "
                              "every output) or seen (over the classes seen so far)")
        self.outputs = outputs
        if scenario not in self.supported_scenarios:
            raise ConfigError(
                f"method={self.name} does not support scenario={scenario}; "
                f"it supports {list(self.supported_scenarios)}: run it with "
                f"scenario={self.supported_scenarios[0]}"
            )
        for plugin in plugins:
            if scenario not in plugin.supported_scenarios:
                raise ConfigError(
                    f"method={self.name} cannot take plugin {contract.plugin_name(plugin)} "
                    f"in scenario={scenario}: the plugin supports "
                    f"{list(plugin.supported_scenarios)}: run it with "
                    f"scenario={plugin.supported_scenarios[0]}"
                )
        missing = self.memory_needs - memory.capabilities
        if missing or (self.memory_needs and memory.size == 0):
            raise ValueError(
                f"method={self.name} needs a memory with {sorted(self.memory_needs)}, but "
                f"memory={type(memory).__name__.lower()} (size {memory.size}) offers "
                f"{sorted(memory.capabilities) if memory.size else 'nothing'}; "
                f"{self.memory_hint}"
            )
        self.model = model
        self.make_optimizer = optimizer
        self.memory = memory
        self.preprocess = preprocess
        self.class_mask = class_mask
        self.scenario = scenario
        self.counter = counter if counter is not None else FlopCounter()
        self.plugins = list(plugins)
        n_classes = class_mask.shape[1]
        self.seen_mask = torch.zeros(n_classes, dtype=torch.bool, device=class_mask.device)
        self.old_mask = self.seen_mask.clone()  # classes of tasks before the current one
        self._auxiliary: dict[str, tuple[nn.Module, Callable | None]] = {}
        self.ctx = RunContext(self.name)
        self.predict_needs_task_ids = self.predict_needs_task_ids or any(
            p.predict_needs_task_ids for p in self.plugins)

    def add_auxiliary(self, name: str, module: nn.Module,
                      optimizer: Callable[..., torch.optim.Optimizer] | None = None) -> None:
        """A network trained next to the model (e.g. a generator): its FLOPs are counted,
        and with `optimizer` it is stepped with the model on the summed loss terms."""
        self._auxiliary[name] = (module, optimizer)

    def _build(self) -> None:
        contract.check_pairs(self)
        for plugin in self.plugins:
            with contract.naming(self, plugin):
                plugin.setup(self)
        for plugin in self.plugins:
            with contract.naming(self, plugin):
                self.model = plugin.wrap_model(self.model)
        with contract.naming(self, *self.plugins):
            self.model = self.wrap_model(self.model)
        for plugin in self.plugins:
            with contract.naming(self, plugin):
                plugin.check_model(self.model)
        self.optimizer = self.make_optimizer(self.trainable_parameters())
        self.aux_optimizers = {name: make(module.parameters())
                               for name, (module, make) in self._auxiliary.items() if make}
        self.counter.attach(self.model)
        for module, _ in self._auxiliary.values():
            self.counter.attach(module)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    @property
    def task_steps(self) -> int:
        """The current task's planned steps (`ctx.task_steps`; a clear error where the
        budget plans none, under `budget.match`)."""
        return self.ctx.planned_steps()

    @task_steps.setter
    def task_steps(self, steps: int | None) -> None:
        self.ctx.task_steps = steps

    def reset_optimizer(self) -> None:
        """A fresh optimiser over the trainable parameters (e.g. after re-initialising)."""
        self.optimizer = self.make_optimizer(self.trainable_parameters())

    # -- what the runner calls ------------------------------------------------------------
    def _see(self, task: Task) -> None:
        self.old_mask = self.seen_mask.clone()
        self.seen_mask = self.seen_mask | self.class_mask[task.id]

    def begin_task(self, task: Task) -> None:
        self._see(task)
        for plugin in self.plugins:
            plugin.before_task(task)
        self.before_task(task)

    def see_labels(self, y: torch.Tensor) -> None:
        """Adds the classes of a batch's labels to `seen_mask` (streams whose batches may
        hold classes the announced task does not: task-free, blurry)."""
        self.seen_mask[y] = True

    def check_stream(self, modes: set[str], stream: str) -> None:
        """Fails before training unless the method and every plugin support `modes` (see
        `cl_bench.data.modes.required_modes`)."""
        for part, name, supported in (
                (f"method={self.name}", self.name, self.supported_streams),
                *((f"plugin {type(p).__name__}", type(p).__name__, p.supported_streams)
                  for p in self.plugins)):
            missing = sorted(modes - set(supported))
            if missing:
                raise ConfigError(
                    f"{part} does not support stream={stream} (needs {', '.join(missing)}): "
                    f"{name} supports {', '.join(supported)}"
                    + ("; its before_task/after_task do work a task-free stream never "
                       "calls" if "task_free" in missing else ""))

    def check_budget(self, planned: bool, why: str = "budget.match") -> None:
        """Fails before training when the method or a plugin schedules by the task's
        planned steps and the budget plans none (`planned` false)."""
        contract.check_planned_steps(self, planned, why)

    def plan_task(self, steps: int | None) -> None:
        """The runner: the planned steps of the task about to train (None: not planned,
        under `budget.match`), after `train_data` and before its first step."""
        self.ctx.task_steps = steps

    def observe(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One training batch: `before_batch`, `steps_per_batch` optimisation steps (the
        ones after the first counted as FLOP component `inner_flops`), `after_batch`.
        Returns the last step's detached total `loss`, when there are several, the
        `terms`, and what it put in `ctx.log` as `logged` (no host sync here)."""
        self.before_batch(batch)
        for inner in range(self.steps_per_batch):
            self.ctx.inner = inner
            if inner:
                with self.flops(self.inner_flops):
                    out = self._optimisation_step(batch)
            else:
                out = self._optimisation_step(batch)
        self.ctx.inner = 0
        self.after_batch(batch)
        return out

    def _optimisation_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """zero_grad -> loss terms (method's, then plugins') -> backward -> after_backward
        (method's, then plugins') -> step -> after_step (method's, then plugins')."""
        ctx = self.ctx
        optimizers = [self.optimizer, *self.aux_optimizers.values()]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        ctx.start_step()
        terms = self.loss(batch)
        for plugin in self.plugins:
            terms.update(plugin.loss(batch))
        if not terms:  # e.g. GDumb, which only fills its memory from the stream
            out = {"loss": torch.zeros((), device=batch.y.device)}
        else:
            total = reduce(operator.add, terms.values())
            total.backward()
            self.after_backward(batch)
            for plugin in self.plugins:
                plugin.after_backward(batch)
            for opt in optimizers:
                opt.step()
            out = {"loss": total.detach()}
            if len(terms) > 1:
                out["terms"] = {k: v.detach() for k, v in terms.items()}
        ctx.last_forward = None  # frees the step's graph
        self.after_step(batch)
        for plugin in self.plugins:
            plugin.after_step(batch)
        ctx.logits = None
        if ctx.log:
            out["logged"] = {k: v.detach() for k, v in ctx.log.items()}
        return out

    def end_task(self, task: Task) -> None:
        self.after_task(task)
        for plugin in self.plugins:
            plugin.after_task(task)

    def skip_task(self, task: Task) -> None:
        """A task a resumed run had completed: its weights and state are loaded."""
        self._see(task)
        self.resume_task(task)
        for plugin in self.plugins:
            plugin.resume_task(task)

    def active_samples(self, n: int) -> torch.Tensor | None:
        """Bool mask over the `n` samples of the task's training data that stay in
        training (the plugins' masks ANDed), or None for all of them."""
        masks = [m for m in (p.active_samples(n) for p in self.plugins) if m is not None]
        return reduce(operator.and_, masks) if masks else None

    def active_version(self) -> int:
        """Changes whenever a plugin changed its active set (no host sync)."""
        return sum(p.active_version for p in self.plugins)

    def summary(self) -> dict:
        """Numbers the plugins report for `summary.json`."""
        return {k: v for p in self.plugins for k, v in p.summary().items()}

    def predict(self, x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over all classes for a preprocessed batch: the plugin's that replaces
        the prediction (at most one, on a method that predicts with its model's output:
        checked at build), else the method's `predict_logits`."""
        for plugin in self.plugins:
            logits = plugin.predict(x, task_ids)
            if logits is not None:
                return logits
        return self.predict_logits(x, task_ids)

    def reveal_task_ids(self, task_ids: torch.Tensor) -> None:
        """The evaluator: the true task ids of the batch `predict(x)` just scored (the
        method's `see_task_ids`, then the plugins')."""
        self.see_task_ids(task_ids)
        for plugin in self.plugins:
            plugin.see_task_ids(task_ids)

    def state_dict(self) -> dict:
        """Model, optimisers, memory and plugin state; subclasses add what else they hold."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "memory": self.memory.state_dict(),
                "auxiliary": {name: module.state_dict()
                              for name, (module, _) in self._auxiliary.items()},
                "aux_optimizers": {k: o.state_dict() for k, o in self.aux_optimizers.items()},
                "plugins": [p.state_dict() for p in self.plugins]}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.memory.load_state_dict(state["memory"])
        for name, (module, _) in self._auxiliary.items():
            module.load_state_dict(state["auxiliary"][name])
        for name, opt in self.aux_optimizers.items():
            opt.load_state_dict(state["aux_optimizers"][name])
        for plugin, plugin_state in zip(self.plugins, state["plugins"], strict=True):
            plugin.load_state_dict(plugin_state)

    # -- phases ---------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def before_task(self, task: Task) -> None:
        pass

    def train_data(self, task: Task) -> Batch:
        """The samples the budget draws this task's batches from."""
        ids = task.train_task if task.train_task is not None else \
            torch.full_like(task.train_y, task.id)
        return Batch(task.train_x, task.train_y, ids)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": self.cross_entropy(self.forward(batch.x), batch.y, batch.task)}

    def after_backward(self, batch: Batch) -> None:
        pass

    def after_step(self, batch: Batch) -> None:
        pass

    def after_task(self, task: Task) -> None:
        pass

    def resume_task(self, task: Task) -> None:
        """Rebuild per-task state the checkpoint does not hold."""

    def before_batch(self, batch: Batch) -> None:
        pass

    def after_batch(self, batch: Batch) -> None:
        pass

    def predict_logits(self, x: torch.Tensor, task_ids: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """The method's prediction: logits over all classes of a preprocessed batch."""
        return self.model(x)

    def loss_logits(self, logits: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """The logits the classification loss scores: in task-IL the sample's own task's
        classes (the others at -inf); in class-IL with `outputs=seen` the classes seen so
        far."""
        if self.scenario == "task_il":
            return logits.masked_fill(~self.class_mask[task_ids], float("-inf"))
        if self.outputs == "seen" and self.scenario == "class_il":
            return logits.masked_fill(~self.seen_mask, float("-inf"))
        return logits

    def see_task_ids(self, task_ids: torch.Tensor) -> None:
        """The true task ids of the batch the last `predict(x)` scored (evaluation)."""

    # -- helpers --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a uint8 training batch (normalised and augmented on the device). The
        step's first call must start with the current batch (`batch.cat(replayed)`): its
        logits are the step's `batch_logits`."""
        inputs = self.preprocess(x, train=True)
        logits = self.model(inputs)
        self.ctx.last_forward = (x, inputs, logits)
        self.ctx.record_logits(logits)
        return logits

    def batch_logits(self, batch: Batch) -> torch.Tensor | None:
        """The detached logits of this step's training batch from the step's first
        forward (None before one ran); for plugins, in `loss` or `after_step`."""
        return self.ctx.batch_logits(len(batch))

    def forward_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model inputs, logits) of training batch `x` for a plugin: the method's own
        forward of this step when it ran on this very batch (a distillation plugin then
        costs no second pass, and sees the same augmentation), else a new forward."""
        last = self.ctx.last_forward
        if last is not None and last[0] is x:
            return last[1], last[2]
        inputs = self.preprocess(x, train=True)
        return inputs, self.model(inputs)

    def cross_entropy(self, logits, y, task_ids) -> torch.Tensor:
        """The classification loss over `loss_logits` (in task-IL the sample's own task's
        classes): the plugin's that replaces it (at most one, checked at build), else
        cross-entropy."""
        logits = self.loss_logits(logits, task_ids)
        for plugin in self.plugins:
            loss = plugin.classification_loss(logits, y, task_ids)
            if loss is not None:
                return loss
        return F.cross_entropy(logits, y)

    def replay(self, n: int, *extras: str) -> Batch:
        """`n` samples from memory, with their indices when the memory wants losses back."""
        return self.memory.sample(n, *extras, with_index=self.memory.wants_losses)

    def report_losses(self, replayed: Batch, per_sample: torch.Tensor) -> None:
        """Hand the replayed samples' per-sample losses to the memory (if it wants them)."""
        if replayed.index is not None:
            self.memory.update(replayed.index, loss=per_sample.detach())

    def report_ce(self, replayed: Batch, logits: torch.Tensor) -> None:
        """`report_losses` with the replayed samples' cross-entropy, computed only when the
        memory wants it."""
        if replayed.index is not None:
            self.memory.update(replayed.index, loss=F.cross_entropy(
                logits.detach(), replayed.y, reduction="none"))

    def frozen_copy(self, module: nn.Module) -> nn.Module:
        """A frozen copy (teacher, previous generator) whose FLOPs go to the same counter."""
        copy_ = copy.deepcopy(module, {id(self.counter): self.counter})
        return copy_.requires_grad_(False)

    def flops(self, component: str):
        """Context: training FLOPs counted inside are tagged `component` (`flops_<name>`)."""
        return self.counter.component(component)
