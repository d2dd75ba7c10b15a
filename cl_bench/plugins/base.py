"""The plugin interface: the method's phases, implemented in part, with state of its own."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cl_bench.data.batch import Batch
from cl_bench.data.stream import Task


@dataclass
class PluginConf:
    """Schema base of every plugin (`conf/plugin/<name>.yaml`, placed at `plugins.<name>`)."""

    _target_: str = "???"


class Plugin:
    """A part that composes with any method: it implements some of the method's phases
    and keeps its own state (`state_dict`, checkpointed with the run). The method's entry
    points call its plugins, in config order, after its own phase (`loss`,
    `after_backward`, `after_step`, `after_task`, `resume_task`, `see_task_ids`) and before
    it for `before_task` and `wrap_model`; `loss` terms are added to the method's;
    `predict` and `classification_loss` replace the method's when they return a tensor
    (one plugin at most each). What a plugin needs of its method (`needs`, see
    `cl_bench.contract`), of other plugins (`needs_plugins`) and of the run
    (`planned_steps` in `needs`) is checked before training; `nearest` names the closest
    working choice for the refusal's message.

    `active_samples(n)` may shrink the task's active training set (a bool mask over its
    `n` samples, or None for no opinion); a plugin that changes it bumps `active_version`
    so the budget asks again. `summary()` adds numbers to the run's `summary.json`.

    `setup(method)` binds the plugin to its method before model surgery; `self.method`
    then gives the model, memory, class masks (`seen_mask`, `old_mask`) and FLOP counter.
    """

    method = None
    supported_scenarios: tuple[str, ...] = ("class_il", "task_il", "domain_il")
    # stream modes (cl_bench.data.modes): task_free only without before_task/after_task work
    supported_streams: tuple[str, ...] = ("task", "online", "blurry")
    # constructor arguments that trade plasticity for stability, largest = most stable
    # (`clbench-tune` decays them; config keys `plugins.<name>.<knob>`)
    stability_knobs: tuple[str, ...] = ()
    active_version = 0
    resumes_in_task = True  # as Method.resumes_in_task
    needs: frozenset[str] = frozenset()
    needs_plugins: tuple[str, ...] = ()
    removes: frozenset[str] = frozenset()  # provisions it takes away from the others
    nearest = ""  # the closest working choice, for a refused pair's message
    predict_needs_task_ids = False  # its `predict` wants the task ids in task-IL
    name = ""  # its config name (`plugins.<name>`), set by the runner

    def setup(self, method) -> None:
        self.method = method

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Model surgery, before the optimiser is built and the FLOP counter attaches."""
        return model

    def check_model(self, model: nn.Module) -> None:
        """Fails (ValueError) on a model it cannot work with, after all model surgery."""

    def before_task(self, task: Task) -> None:
        pass

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Extra loss terms for this step (each logged as `loss_<term>`)."""
        return {}

    def after_backward(self, batch: Batch) -> None:
        pass

    def after_step(self, batch: Batch) -> None:
        pass

    def after_task(self, task: Task) -> None:
        pass

    def resume_task(self, task: Task) -> None:
        """A task a resumed run had completed (weights already loaded)."""

    def see_task_ids(self, task_ids: torch.Tensor) -> None:
        """The true task ids of the batch the last `predict(x)` scored (evaluation)."""

    def active_samples(self, n: int) -> torch.Tensor | None:
        """Bool mask of the task's `n` training samples to keep training on, or None."""
        return None

    def summary(self) -> dict:
        """Numbers for the run's summary."""
        return {}

    def classification_loss(self, logits, y, task_ids) -> torch.Tensor | None:
        """Replaces the method's cross-entropy (logits already masked in task-IL)."""
        return None

    def predict(self, x: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Replaces the method's prediction."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
