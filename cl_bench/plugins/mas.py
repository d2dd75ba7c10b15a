"""Memory aware synapses."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.plugins import importance
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "mas")
@dataclass
class MASConf(PluginConf):
    _target_: str = "cl_bench.plugins.mas.MAS"
    strength: float = 1.0  # lambda
    # training samples of the task the importance averages over; null: all
    samples: int | None = None


@defaults_from(MASConf)
class MAS(Plugin):
    """Memory aware synapses (Aljundi et al., ECCV 2018).

    After each task the importance Omega_t,i = 1/N sum_k |d ||z(x_k)||_2^2 / d theta_i|
    over `samples` training samples of the task (null = all), z the active logits
    (`importance.mas`: task-IL the task's classes, class-IL the classes seen, domain-IL
    all), is added to the accumulated Omega and the anchor theta* moves to the current
    parameters. Loss term `mas` = strength * sum_i Omega_i (theta_i - theta*_i)^2 (the
    paper's lambda, no 1/2). Per-sample absolute gradients as in the paper; the authors'
    code takes the absolute value of each *batch's* gradient instead, which lets opposite
    per-sample gradients cancel. None is estimated after the last task.
    """

    needs = frozenset({"class_logits", "steady_parameters"})

    stability_knobs = ("strength",)

    def __init__(self, strength: float, samples: int | None):
        if strength < 0:
            raise ValueError(f"plugins.mas.strength={strength} must be >= 0")
        if samples is not None and samples < 1:
            raise ValueError(f"plugins.mas.samples={samples} must be >= 1 "
                             f"(or null for every training sample of the task)")
        self.strength, self.samples = strength, samples
        self.anchor: importance.Tensors = {}
        self.omega: importance.Tensors = {}

    def loss(self, batch):
        if not self.omega or self.strength == 0:
            return {}
        return {"mas": self.strength * importance.quadratic_penalty(
            self.method.model, self.anchor, self.omega)}

    def after_task(self, task):
        if importance.last_task(self.method, task.id):
            return
        omega = importance.mas(self.method, task, self.samples)
        self.omega = {n: self.omega[n] + o if n in self.omega else o for n, o in omega.items()}
        self.anchor = importance.snapshot(self.method.model)

    def state_dict(self):
        return {"anchor": dict(self.anchor), "omega": dict(self.omega)}

    def load_state_dict(self, state):
        model = self.method.model
        self.anchor = importance.on_device(model, state["anchor"])
        self.omega = importance.on_device(model, state["omega"])
