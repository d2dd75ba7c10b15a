"""Incremental moment matching."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.plugins import importance
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema

EPS = 1e-8  # added to every Fisher before mode-IMM's weighted mean (as the survey's code does)


@schema("plugin", "imm")
@dataclass
class IMMConf(PluginConf):
    _target_: str = "cl_bench.plugins.imm.IMM"
    mode: str = "mean"  # mean | mode
    # strength of ||theta - theta_{t-1}||^2 (the survey's start value); 0: off
    l2_transfer: float = 0.01
    # one merge weight per task (renormalised over the tasks so far); null: uniform
    alpha: list[float] | None = None
    # mode-IMM: training samples the Fisher averages over; null: all
    fisher_samples: int | None = None
    fisher_labels: str = "all"  # mode-IMM: all | sample | pred | true


@defaults_from(IMMConf)
class IMM(Plugin):
    """Incremental moment matching (Lee et al., NeurIPS 2017), mean-IMM and mode-IMM, with
    the weight-transfer and L2-transfer of the paper (De Lange et al.'s survey, TPAMI 2021,
    runs it the same way in task-IL).

    What merging means when the model is trained task after task: the plugin keeps each
    task's own solution theta_t, the model at the end of task t *before* any merge. Task t+1
    is trained from theta_t (weight transfer; the model is set back to theta_t when the task
    begins), with the loss term `l2_transfer` = l2_transfer * ||theta - theta_t||^2 (no 1/2,
    as in the paper and the survey's code; 0 turns it off). After every task the model
    becomes the merge of theta_1..theta_t, which is what is evaluated (the paper merges
    once, after the last task; merging after each task gives the accuracy matrix):

        mean-IMM: sum_k alpha_k theta_k
        mode-IMM: sum_k alpha_k (F_k + eps) theta_k / sum_k alpha_k (F_k + eps)  (per parameter)

    alpha_k uniform over the tasks so far unless `alpha` gives one weight per task
    (renormalised over the tasks so far); F_k the diagonal Fisher of theta_k on task k
    (`importance.fisher`, as for EWC), eps = 1e-8 so that a parameter no task's Fisher
    sees is averaged, not divided by zero. In task-IL the output layer (`model.head`) is
    not merged but taken from theta_t, as the survey keeps each task's head: a task's rows
    are trained only in that task, and averaging them with the untrained rows of the
    earlier solutions would shrink them. Only trainable parameters are merged; buffers
    (batch-norm statistics) stay those of theta_t.
    """

    needs = frozenset({"class_logits", "steady_parameters"})

    stability_knobs = ("l2_transfer",)

    def __init__(self, mode: str, l2_transfer: float,
                 alpha: list[float] | None, fisher_samples: int | None,
                 fisher_labels: str):
        if mode not in ("mean", "mode"):
            raise ValueError(f"plugins.imm.mode={mode!r}: choose 'mean' or 'mode'")
        if l2_transfer < 0:
            raise ValueError(f"plugins.imm.l2_transfer={l2_transfer} must be >= 0")
        if alpha is not None and (not alpha or min(alpha) <= 0):
            raise ValueError(f"plugins.imm.alpha={alpha}: give one positive weight per task, "
                             f"or null for uniform weights")
        importance.check_fisher_settings("imm", fisher_samples, fisher_labels)
        self.mode, self.l2_transfer = mode, l2_transfer
        self.alpha = None if alpha is None else list(alpha)
        self.fisher_samples, self.fisher_labels = fisher_samples, fisher_labels
        self.solutions: list[importance.Tensors] = []
        self.fishers: list[importance.Tensors] = []

    def setup(self, method):
        super().setup(method)
        n_tasks = method.class_mask.shape[0]
        if self.alpha is not None and len(self.alpha) != n_tasks:
            raise ValueError(f"plugins.imm.alpha has {len(self.alpha)} weights but the "
                             f"benchmark has {n_tasks} tasks; give one per task or null")

    def before_task(self, task):
        if self.solutions:
            self._load(self.solutions[-1])

    def loss(self, batch):
        if not self.solutions or self.l2_transfer == 0:
            return {}
        return {"l2_transfer": self.l2_transfer * importance.quadratic_penalty(
            self.method.model, self.solutions[-1])}

    def after_task(self, task):
        self.solutions.append(importance.snapshot(self.method.model))
        if self.mode == "mode":
            self.fishers.append(importance.fisher(self.method, task, self.fisher_samples,
                                                  self.fisher_labels))
        self._load(self.merge())

    def weights(self) -> list[float]:
        """alpha_k of the tasks so far, summing to 1."""
        n = len(self.solutions)
        raw = [1.0] * n if self.alpha is None else self.alpha[:n]
        return [a / sum(raw) for a in raw]

    def merge(self) -> importance.Tensors:
        """The merged parameters of the solutions so far."""
        alpha, latest = self.weights(), self.solutions[-1]
        keep = set()
        head = getattr(self.method.model, "head", None)
        if self.method.scenario == "task_il" and isinstance(head, torch.nn.Module):
            ids = {id(p) for p in head.parameters()}
            keep = {n for n, p in self.method.model.named_parameters() if id(p) in ids}
        merged = {}
        for name, last in latest.items():
            if name in keep:
                merged[name] = last.clone()
            elif self.mode == "mean":
                merged[name] = sum(a * s[name] for a, s in zip(alpha, self.solutions, strict=True))
            else:
                precision = [a * (f[name] + EPS) for a, f in zip(alpha, self.fishers, strict=True)]
                merged[name] = sum(p * s[name] for p, s in
                                   zip(precision, self.solutions, strict=True)) / sum(precision)
        return merged

    @torch.no_grad()
    def _load(self, values: importance.Tensors) -> None:
        params = dict(self.method.model.named_parameters())
        for name, value in values.items():
            params[name].copy_(value)

    def state_dict(self):
        return {"solutions": [dict(s) for s in self.solutions],
                "fishers": [dict(f) for f in self.fishers]}

    def load_state_dict(self, state):
        model = self.method.model
        self.solutions = [importance.on_device(model, s) for s in state["solutions"]]
        self.fishers = [importance.on_device(model, f) for f in state["fishers"]]
