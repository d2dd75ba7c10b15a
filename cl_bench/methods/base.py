"""The method kernel: a few named phases around one optimisation step, which the base owns."""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import FlopCounter
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

    Phases a method overrides (each optional):
      `wrap_model(model)`   model surgery (after the plugins'), before the optimiser is
                            built over the trainable parameters and the counter attaches;
      `before_task(task)`, `train_data(task)` (the batch the budget draws from),
      `loss(batch) -> {term: tensor}` (summed; each term logged as `loss_<term>`),
      `after_backward(batch)` (between backward and step: projections, gradient masks),
      `after_step(batch)` (memory updates, masks re-applied), `after_task(task)`,
      `resume_task(task)` (a task a resumed run had completed), `consolidate()` (every
      `stream.consolidate_every` steps: the boundary-free stand-in for `after_task`),
      `predict(x, task_ids=None)` (set `predict_needs_task_ids` to get task ids in task-IL).
    The runner drives it through `begin_task`, `observe`, `end_task` and `skip_task`, and
    sets `task_steps`, the planned steps of the current task (`Budget.steps_per_task` of
    its training data), after `train_data` and before the first step. The budget draws
    batches from the samples `active_samples(n)` keeps (the plugins' masks ANDed; they may
    shrink it during a task) and each training batch carries their positions in
    `batch.sample`. By convention a method's first `self.forward` of a step starts with
    the current batch (finetune, ER's `batch.cat(replayed)`, DER, DER++), so
    `batch_logits(batch)` gives plugins that step's logits of the batch.
    A method declares the stream modes it runs in (`supported_streams`, see
    `cl_bench.data.modes`): `task_free` only where `before_task`/`after_task` do nothing
    it needs, since a task-free stream never calls them; there the runner tracks the
    classes seen from the batches' labels (`see_labels`) instead.
    A method declares the memory capabilities it needs in `memory_needs` (checked here),
    tags FLOPs with `self.flops(name)`, and may add auxiliary networks with their own
    optimiser (`add_auxiliary`), which the base steps with the model.
    """

    supported_scenarios: tuple[str, ...] = ("class_il", "task_il", "domain_il")
    supported_streams: tuple[str, ...] = ("task", "online", "blurry")
    memory_needs: frozenset[str] = frozenset()
    memory_hint = "choose e.g. memory=reservoir memory.size=500"  # the fix, when it lacks them
    predict_needs_task_ids = False
    # constructor arguments that trade plasticity for stability (`clbench-tune` decays
    # them; config keys `method.<knob>`)
    stability_knobs: tuple[str, ...] = ()

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
    ):
        self.name = name or type(self).__name__.lower()
        if scenario not in self.supported_scenarios:
            raise ValueError(
                f"method={self.name} does not support scenario={scenario}; "
                f"it supports {list(self.supported_scenarios)}"
            )
        for plugin in plugins:
            if scenario not in plugin.supported_scenarios:
                raise ValueError(
                    f"plugin {type(plugin).__name__} does not support scenario={scenario}; "
                    f"it supports {list(plugin.supported_scenarios)}"
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
        self._last_forward: tuple | None = None  # (batch, inputs, logits) of this step
        self._step_logits: torch.Tensor | None = None  # of the step's first forward
        # numbers a step logs beside its loss terms (train.csv columns by name, averaged
        # over the steps that set them); device tensors, so no host sync
        self.step_log: dict[str, torch.Tensor] = {}
        self.task_steps = 0  # planned steps of the current task (set by the runner)
        self.output_dir: Path | None = None  # the run directory, for figures (set by the runner)

    def add_auxiliary(self, name: str, module: nn.Module,
                      optimizer: Callable[..., torch.optim.Optimizer] | None = None) -> None:
        """A network trained next to the model (e.g. a generator): its FLOPs are counted,
        and with `optimizer` it is stepped with the model on the summed loss terms."""
        self._auxiliary[name] = (module, optimizer)

    def _build(self) -> None:
        for plugin in self.plugins:
            plugin.setup(self)
        for plugin in self.plugins:
            self.model = plugin.wrap_model(self.model)
        self.model = self.wrap_model(self.model)
        self.optimizer = self.make_optimizer(self.trainable_parameters())
        self.aux_optimizers = {name: make(module.parameters())
                               for name, (module, make) in self._auxiliary.items() if make}
        self.counter.attach(self.model)
        for module, _ in self._auxiliary.values():
            self.counter.attach(module)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

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

    def trigger_consolidation(self) -> None:
        """A consolidation point of a boundary-free stream: the classes seen so far become
        the old ones, then the method's and the plugins' `consolidate`."""
        self.old_mask = self.seen_mask.clone()
        self.consolidate()
        for plugin in self.plugins:
            plugin.consolidate()

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

    def observe(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step: zero_grad -> loss terms -> backward -> after_backward ->
        step -> after_step. Returns the detached total `loss`, when there are several, the
        `terms`, and what the step put in `step_log` as `logged` (no host sync here)."""
        optimizers = [self.optimizer, *self.aux_optimizers.values()]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self._step_logits = None
        self.step_log = {}
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
        self._last_forward = None  # frees the step's graph
        self.after_step(batch)
        for plugin in self.plugins:
            plugin.after_step(batch)
        self._step_logits = None
        if self.step_log:
            out["logged"] = {k: v.detach() for k, v in self.step_log.items()}
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
        """Logits over all classes for a preprocessed batch (a plugin may replace them)."""
        for plugin in self.plugins:
            logits = plugin.predict(x, task_ids)
            if logits is not None:
                return logits
        return self.model(x)

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

    def consolidate(self) -> None:
        """Every `stream.consolidate_every` steps (task-free consolidation)."""

    # -- helpers --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a uint8 training batch (normalised and augmented on the device)."""
        inputs = self.preprocess(x, train=True)
        logits = self.model(inputs)
        self._last_forward = (x, inputs, logits)
        if self._step_logits is None:
            self._step_logits = logits.detach()
        return logits

    def batch_logits(self, batch: Batch) -> torch.Tensor | None:
        """The detached logits of this step's training batch from the step's first
        forward (None before one ran); for plugins, in `loss` or `after_step`."""
        if self._step_logits is None:
            return None
        return self._step_logits[: len(batch)]

    def forward_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model inputs, logits) of training batch `x` for a plugin: the method's own
        forward of this step when it ran on this very batch (a distillation plugin then
        costs no second pass, and sees the same augmentation), else a new forward."""
        last = self._last_forward
        if last is not None and last[0] is x:
            return last[1], last[2]
        inputs = self.preprocess(x, train=True)
        return inputs, self.model(inputs)

    def cross_entropy(self, logits, y, task_ids) -> torch.Tensor:
        """The classification loss; in task-IL over the sample's own task's classes. A
        plugin (e.g. soft targets) may replace it."""
        if self.scenario == "task_il":
            logits = logits.masked_fill(~self.class_mask[task_ids], float("-inf"))
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
