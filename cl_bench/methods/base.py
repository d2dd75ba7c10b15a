"""The method interface: a few named phases around one optimisation step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.data.stream import Task
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.base import Memory
from cl_bench.methods.remedies import install as install_remedies

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 x, labels, task ids


class Method:
    """Base class of every method. Owns the model, its optimiser and the memory.

    Phases: `before_task(task)`, `observe(x, y, task_ids)` (one optimisation step on a
    uint8 batch), `after_task(task)`, `predict(x)`. A subclass usually overrides only
    `loss` and `after_step`. In task-IL every loss masks the logits to the classes of
    the sample's own task.
    """

    supported_scenarios: tuple[str, ...] = ("class_il", "task_il", "domain_il")
    needs_memory = False

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        memory: Memory,
        preprocess: Preprocess,
        class_mask: torch.Tensor,
        scenario: str,
        name: str = "",
        **options: object,
    ):
        self.name = name or type(self).__name__.lower()
        if scenario not in self.supported_scenarios:
            raise ValueError(
                f"method={self.name} does not support scenario={scenario}; "
                f"it supports {list(self.supported_scenarios)}"
            )
        if self.needs_memory and memory.size == 0:
            raise ValueError(
                f"method={self.name} replays from memory but memory has size 0; "
                "choose e.g. memory=reservoir memory.size=500"
            )
        self.model = model
        self.optimizer = optimizer(model.parameters())
        self.memory = memory
        self.preprocess = preprocess
        self.class_mask = class_mask
        self.scenario = scenario
        install_remedies(self, optimizer, **options)  # stability-gap switches; off by default

    # -- phases -------------------------------------------------------------------------
    def before_task(self, task: Task) -> None:
        pass

    def train_data(self, task: Task) -> Batch:
        """The tensors the budget draws this task's batches from."""
        return task.train_x, task.train_y, torch.full_like(task.train_y, task.id)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> dict:
        """One optimisation step. Returns detached 0-d tensors (no host sync here)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, task_ids)
        loss.backward()
        self.optimizer.step()
        self.after_step(x, y, task_ids)
        return {"loss": loss.detach()}

    def after_task(self, task: Task) -> None:
        pass

    def resume_task(self, task: Task) -> None:
        """Called instead of training for each task a resumed run had completed, so a
        method can rebuild per-task state its checkpoint does not hold."""

    def state_dict(self) -> dict:
        """Model, optimiser and memory state; subclasses add what else they hold."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.memory.load_state_dict(state["memory"])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over all classes for a preprocessed batch."""
        return self.model(x)

    # -- what subclasses override -------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(self.forward(x), y, task_ids)

    def after_step(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> None:
        pass

    # -- helpers ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a uint8 training batch (normalised and augmented on the device)."""
        return self.model(self.preprocess(x, train=True))

    def cross_entropy(self, logits, y, task_ids) -> torch.Tensor:
        if self.scenario == "task_il":
            logits = logits.masked_fill(~self.class_mask[task_ids], float("-inf"))
        return F.cross_entropy(logits, y)
