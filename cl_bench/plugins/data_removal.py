"""SparCL's dynamic data removal."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.plugins.forgetting import ForgettingEvents, at_step, fraction
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "data_removal")
@dataclass
class DataRemovalConf(PluginConf):
    _target_: str = "cl_bench.plugins.data_removal.DataRemoval"
    remove_frac: float = 0.3  # of each task's training set, removed in total
    # fractions of the task's planned steps (epochs 5..20 of 50)
    stages: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])


@defaults_from(DataRemovalConf)
class DataRemoval(Plugin):
    """Dynamic data removal (DDR) of SparCL (Wang et al., NeurIPS 2022), as in the
    reference code `neu-spiral/SparCL`: at each of `stages` (fractions of the task's planned
    steps; the code's epochs 5, 10, 15, 20 of 50) the round(remove_frac * n / len(stages))
    active samples with the fewest forgetting events since the previous stage (never
    correctly classified ones count as the most; ties to the lower position) leave the
    task's training set for the rest of the task. Every task starts with all its samples.
    Under an epoch budget the epochs get shorter, which is where the FLOPs are saved.
    Summary: `data_removed`, samples removed over all tasks."""

    needs = frozenset({"step_logits", "planned_steps"})
    # the batches drawn depend on the samples removed along the task, which a resumed
    # iterator cannot redraw: a run resumes from the task's start
    resumes_in_task = False

    def __init__(self, remove_frac: float,
                 stages: tuple[float, ...]):
        self.remove_frac = fraction(remove_frac, "plugins.data_removal.remove_frac")
        if not stages:
            raise ValueError("plugins.data_removal.stages=[] must list at least one fraction "
                             "of the task's steps")
        for s in stages:
            fraction(s, "plugins.data_removal.stages")
        self.stages = sorted(stages)
        self.removed: dict[int, int] = {}  # task id -> samples removed during it
        self._reset(None)

    def _reset(self, task_id: int | None) -> None:
        self.task_id = task_id
        self.mask: torch.Tensor | None = None
        self.stats: ForgettingEvents | None = None
        self.step = self.done = 0

    def before_task(self, task):
        self._reset(task.id)
        self.removed[task.id] = 0

    def active_samples(self, n):
        if self.mask is None:
            device = self.method.seen_mask.device
            self.mask = torch.ones(n, dtype=torch.bool, device=device)
            self.stats = ForgettingEvents(n, device)
            self.per_stage = round(self.remove_frac * n / len(self.stages))
            self.stage_steps = [at_step(s, self.method.task_steps) for s in self.stages]
        return self.mask

    def after_step(self, batch):
        if self.stats is None or self.done == len(self.stages):
            return
        self.step += 1
        self.stats.record(self.method, batch)
        while self.done < len(self.stages) and self.step >= self.stage_steps[self.done]:
            self._remove()
            self.done += 1

    def _remove(self) -> None:
        active = self.mask.nonzero().squeeze(1)
        out = self.stats.easiest(active, min(self.per_stage, len(active)))
        self.mask[out] = False
        self.removed[self.task_id] += len(out)
        self.active_version += 1
        self.stats.reset()

    def summary(self):
        return {"data_removed": sum(self.removed.values())}

    def state_dict(self):
        return {"removed": dict(self.removed)}

    def load_state_dict(self, state):
        self.removed = dict(state["removed"])
