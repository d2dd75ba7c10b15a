"""Learning without Forgetting: distillation from the model of the previous task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            t2_scaling: bool = False) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015; van de Ven's `loss_fn_kd`): the batch
    mean of -sum_c softmax(teacher / T)_c log_softmax(student / T)_c, times T^2 with
    `t2_scaling`. `teacher` may have fewer columns than `student`: its probabilities are
    zero-padded on the right, so the student's extra (newer) classes are pushed toward zero
    probability."""
    log_q = F.log_softmax(student / temperature, dim=1)
    p = F.softmax(teacher / temperature, dim=1)
    loss = -(p * log_q[:, : teacher.shape[1]]).sum(1).mean()
    return loss * temperature**2 if t2_scaling else loss


def check_distill_args(name: str, temperature: float, alpha: float | None) -> None:
    if not temperature > 0:
        raise ValueError(f"plugins.{name}.temperature={temperature} must be > 0 (2 in LwF)")
    if alpha is not None and alpha < 0:
        raise ValueError(f"plugins.{name}.alpha={alpha} must be >= 0, or null for "
                         "van de Ven's weighting")


WEIGHTINGS = ("scenario", "tasks")


def distill_weight(alpha: float | None, scenario: str, n_previous: int,
                   weighting: str = "scenario") -> float:
    """`alpha`, or with `alpha=None` van de Ven's LwF weighting: `weighting=scenario`, his
    current code's (`lwf_weighting` in GMvandeVen/continual-learning): current loss +
    (number of previous tasks) x the distillation in task-IL and domain-IL, current loss +
    the distillation in class-IL; `weighting=tasks`, his 2019 "three scenarios" code's
    (`train.py`: 1/t current + (1 - 1/t) replay, which under Adam is the same step as
    current + (t - 1) x replay): (number of previous tasks) x the distillation in every
    scenario."""
    if alpha is not None:
        return float(alpha)
    return 1.0 if scenario == "class_il" and weighting == "scenario" else float(n_previous)


@schema("plugin", "lwf")
@dataclass
class LwFConf(PluginConf):
    _target_: str = "cl_bench.plugins.lwf.LwF"
    temperature: float = 2.0
    alpha: float | None = None  # weight of the distillation; null: van de Ven's (t - 1 / 1)
    t2_scaling: bool = False  # multiply the distillation by T^2 (Hinton et al.)
    weighting: str = "scenario"  # alpha=null: scenario (current code) | tasks (2019 code)


@defaults_from(LwFConf)
class LwF(Plugin):
    """Learning without Forgetting (Li & Hoiem, TPAMI 2017), as van de Ven implements it
    (GMvandeVen/continual-learning @e6d795a, the code of "Three types of incremental
    learning", NMI 2022): the teacher is a frozen copy of the model at the end of the
    previous task; on every step the current batch is run through teacher and model, and
    the model's outputs are distilled toward the teacher's soft outputs (`kd_loss`,
    temperature T) over the classes that were active before:

    * task-IL: each previous task's classes, one softmax per task, averaged over the tasks;
    * class-IL: the teacher's softmax over the old classes, the model's over every class
      seen so far (the new ones get zero target probability);
    * domain-IL: all outputs.

    The term `lwf` = w x distillation is added to the method's loss, w = `alpha`, or with
    `alpha: null` van de Ven's weighting (`distill_weight`): t - 1 on task t (t = 1, 2, ...)
    in task-IL (so the per-task distillations are summed) and domain-IL, 1 in class-IL.
    The distillation is not multiplied by T^2 (van de Ven's `loss_fn_kd(norm=False)`);
    `t2_scaling: true` multiplies it (Hinton et al.; his 2019 "three scenarios" code, which
    weights 1/t current vs 1 - 1/t distillation, i.e. w = t - 1, in every scenario:
    `weighting: tasks`).
    FLOPs: the teacher's forward is `flops_teacher`; the model's logits are those of the
    method's own pass when it ran on the current batch (finetune), else an extra pass
    (e.g. ER, whose pass also holds replayed samples) counted as `flops_distillation`.
    """

    needs = frozenset({"class_logits"})

    stability_knobs = ("alpha",)

    def __init__(self, temperature: float, alpha: float | None,
                 t2_scaling: bool, weighting: str):
        check_distill_args("lwf", temperature, alpha)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"plugins.lwf.weighting={weighting!r}: choose 'scenario' (van de "
                             "Ven's current code) or 'tasks' (his 2019 code)")
        self.temperature, self.alpha, self.t2_scaling = float(temperature), alpha, t2_scaling
        self.weighting = weighting
        self.teacher: torch.nn.Module | None = None
        self.done: list[int] = []  # ids of the tasks completed so far

    def weight(self) -> float:
        return distill_weight(self.alpha, self.method.scenario, len(self.done), self.weighting)

    def distillation(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The (unweighted) distillation of `target` (teacher logits) into `logits`."""
        m, T, t2 = self.method, self.temperature, self.t2_scaling
        if m.scenario == "task_il":
            return torch.stack([kd_loss(logits[:, m.class_mask[t]], target[:, m.class_mask[t]],
                                        T, t2) for t in self.done]).mean()
        old = m.old_mask.nonzero().flatten()
        new = (m.seen_mask & ~m.old_mask).nonzero().flatten()
        return kd_loss(logits[:, torch.cat([old, new])], target[:, old], T, t2)

    def loss(self, batch):
        if self.teacher is None:
            return {}
        m = self.method
        with m.flops("distillation"):
            x, logits = m.forward_of(batch.x)
        with torch.no_grad(), m.flops("teacher"):
            target = self.teacher(x)
        return {"lwf": self.weight() * self.distillation(logits, target)}

    def after_task(self, task):
        self.done.append(task.id)
        self.teacher = self.method.frozen_copy(self.method.model).eval()

    def state_dict(self):
        return {"done": list(self.done),
                "teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state):
        self.done = list(state["done"])
        self.teacher = None
        if state["teacher"] is not None:
            self.teacher = self.method.frozen_copy(self.method.model).eval()
            self.teacher.load_state_dict(state["teacher"])
