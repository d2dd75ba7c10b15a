"""Synaptic intelligence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.plugins import importance
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "si")
@dataclass
class SIConf(PluginConf):
    _target_: str = "cl_bench.plugins.si.SI"
    # c; split MNIST (van de Ven et al.): 10 task / 5e4 domain / 5e3 class-IL
    strength: float = 10.0
    xi: float = 0.1  # damping of Omega when a parameter hardly moved (van de Ven's epsilon)


@defaults_from(SIConf)
class SI(Plugin):
    """Synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017), as in van de Ven's
    `GMvandeVen/continual-learning` (`update_importance_estimates`, `update_omega`).

    During a task every optimiser step adds the path integral's increment
    w_i += -g_i * (theta_i after - theta_i before), where g is the gradient the step used:
    `p.grad` after the backward pass of the *total* loss (every method and plugin term,
    this plugin's penalty included, after any gradient projection), as in van de Ven's code.
    At the end of the task Omega_i += w_i / ((theta_i - theta0_i)^2 + xi), theta0 the
    parameters at the task's start (the previous task's end), and the anchor moves to the
    current parameters. Loss term `si` = strength * sum_i Omega_i (theta_i - anchor_i)^2 (no
    1/2, as in van de Ven's surrogate loss; `strength` is the paper's c: split MNIST
    10 / 5e4 / 5e3 for task / domain / class-IL).
    """

    stability_knobs = ("strength",)
    needs = frozenset({"steady_parameters"})

    def __init__(self, strength: float, xi: float):
        if strength < 0:
            raise ValueError(f"plugins.si.strength={strength} must be >= 0")
        if xi <= 0:
            raise ValueError(f"plugins.si.xi={xi} must be > 0 (it bounds Omega when a "
                             f"parameter hardly moved)")
        self.strength, self.xi = strength, xi
        self.anchor: importance.Tensors = {}  # parameters at the end of the last task
        self.omega: importance.Tensors = {}   # accumulated importance
        self.path: importance.Tensors = {}    # this task's running path integral w
        self.previous: importance.Tensors = {}  # parameters before the current step

    def before_task(self, task):
        if not self.anchor:  # the first task starts from the initial parameters
            self.anchor = importance.snapshot(self.method.model)
        self.path = {n: torch.zeros_like(p) for n, p in self.anchor.items()}
        self.previous = importance.snapshot(self.method.model)
        self._params = importance.trainable(self.method.model)  # looked up once per task

    def loss(self, batch):
        if not self.omega or self.strength == 0:
            return {}
        return {"si": self.strength * importance.quadratic_penalty(
            self.method.model, self.anchor, self.omega)}

    @torch.no_grad()
    def after_step(self, batch):
        for name, p in self._params.items():
            if name not in self.path:
                continue
            if p.grad is not None:
                self.path[name] -= p.grad * (p - self.previous[name])
            self.previous[name].copy_(p)

    @torch.no_grad()
    def after_task(self, task):
        current = importance.snapshot(self.method.model)
        for name, w in self.path.items():
            if name not in current:  # no longer trainable (e.g. PackNet's biases)
                continue
            add = w / ((current[name] - self.anchor[name]).pow(2) + self.xi)
            self.omega[name] = self.omega[name] + add if name in self.omega else add
        self.anchor = current

    def state_dict(self):
        return {"anchor": dict(self.anchor), "omega": dict(self.omega), "path": dict(self.path)}

    def load_state_dict(self, state):
        model = self.method.model
        self.anchor = importance.on_device(model, state["anchor"])
        self.omega = importance.on_device(model, state["omega"])
        self.path = importance.on_device(model, state["path"])
        self.previous = importance.snapshot(self.method.model)
        self._params = importance.trainable(model)
