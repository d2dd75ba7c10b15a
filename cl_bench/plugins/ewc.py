"""Elastic weight consolidation and online EWC."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.plugins import importance
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "ewc")
@dataclass
class EWCConf(PluginConf):
    _target_: str = "cl_bench.plugins.ewc.EWC"
    # lambda. 100 is van de Ven's permuted-MNIST value and stays stable under plain SGD (lr 0.1);
    # the method presets ewc / online_ewc set 1e5, his split-MNIST task-IL value with Adam (split
    # MNIST: 1e5 task / 1e10 domain / 1e9 class-IL)
    strength: float = 100.0
    # training samples of the task the Fisher averages over; null: all (van de Ven's default, split
    # MNIST); his permuted-MNIST scripts use 1000
    fisher_samples: int | None = None
    fisher_labels: str = "all"  # all | sample | pred | true (true = empirical Fisher)
    online: bool = False
    gamma: float = 1.0  # online EWC's decay of the running Fisher (only with online=true)


@defaults_from(EWCConf)
class EWC(Plugin):
    """Elastic weight consolidation (Kirkpatrick et al., PNAS 2017) and, with `online`,
    online EWC (Schwarz et al., "Progress & Compress", ICML 2018).

    After each task the diagonal Fisher F_t is estimated at the task's solution theta*_t
    (`importance.fisher`), following van de Ven's `GMvandeVen/continual-learning`
    (`ContinualLearner.estimate_fisher`, its defaults): per-sample squared gradients of
    the log-likelihood (not the square of a batch gradient), labels "all" (the expectation
    over every label weighted by the model's predicted probability, i.e. the true Fisher,
    neither the predicted nor the true label; `fisher_labels` picks the alternatives),
    only over the active classes (task-IL: the task's classes; class-IL: classes seen so
    far; domain-IL: all), on the task's training samples (`fisher_samples`; null = all of
    them), with the model in eval mode; none is estimated after the last task, where no
    training follows. The loss term `ewc` is

        offline: strength / 2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2   (one term per task)
        online:  strength / 2 * sum_i gamma F_i (theta_i - theta*_i)^2,  F <- gamma F + F_t,

    theta* the last task's solution; the gamma inside the online penalty is Schwarz et al.'s
    and van de Ven's. The cross-entropy it is added to is a batch mean, as in van de Ven's
    code, so `strength` takes the three-scenarios values (split MNIST 1e5 / 1e10 / 1e9 for
    task / domain / class-IL).
    """

    needs = frozenset({"class_logits", "steady_parameters"})

    stability_knobs = ("strength",)

    def __init__(self, strength: float, fisher_samples: int | None,
                 fisher_labels: str, online: bool, gamma: float):
        if strength < 0:
            raise ValueError(f"plugins.ewc.strength={strength} must be >= 0")
        importance.check_fisher_settings("ewc", fisher_samples, fisher_labels)
        if not 0 < gamma <= 1:
            raise ValueError(f"plugins.ewc.gamma={gamma} must be in (0, 1]")
        if gamma != 1 and not online:
            raise ValueError(f"plugins.ewc.gamma={gamma} only acts with plugins.ewc.online=true "
                             f"(online EWC); set online=true or drop gamma")
        self.strength = strength
        self.fisher_samples, self.fisher_labels = fisher_samples, fisher_labels
        self.online, self.gamma = online, gamma
        # (anchor theta*, Fisher) pairs: one per task, or one running pair when online
        self.terms: list[tuple[importance.Tensors, importance.Tensors]] = []

    def penalty(self):
        """sum_t sum_i F (theta - theta*)^2 (gamma F online), without strength / 2."""
        scale = self.gamma if self.online else 1.0
        return scale * sum(importance.quadratic_penalty(self.method.model, anchor, fisher)
                           for anchor, fisher in self.terms)

    def loss(self, batch):
        if not self.terms or self.strength == 0:
            return {}
        return {"ewc": 0.5 * self.strength * self.penalty()}

    def after_task(self, task):
        if importance.last_task(self.method, task.id):
            return
        fisher = importance.fisher(self.method, task, self.fisher_samples, self.fisher_labels)
        anchor = importance.snapshot(self.method.model)
        if self.online and self.terms:
            running = self.terms[0][1]
            fisher = {n: self.gamma * running[n] + f for n, f in fisher.items()}
            self.terms = []
        self.terms.append((anchor, fisher))

    def state_dict(self):
        return {"terms": [(dict(a), dict(f)) for a, f in self.terms]}

    def load_state_dict(self, state):
        model = self.method.model
        self.terms = [(importance.on_device(model, a), importance.on_device(model, f))
                      for a, f in state["terms"]]
