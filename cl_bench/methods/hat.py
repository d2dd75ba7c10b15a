"""HAT: hard attention to the task, per-unit gates learned from task embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from cl_bench.methods.base import MethodConf
from cl_bench.methods.isolation import TaskAware, view_layers
from cl_bench.schemas import defaults_from, schema


@schema("method", "hat")
@dataclass
class HATConf(MethodConf):
    smax: float = 400.0  # s at the end of each annealing and at test (paper's grid choice)
    c: float = 0.75  # weight of the attention regulariser (paper's grid choice)
    anneal: str = "epoch"  # epoch: s from 1/smax to smax over each epoch's batches | task
    thres_cosh: float = 50.0  # clamp of s*e in the gradient compensation (authors' code)
    thres_emb: float = 6.0  # embeddings clamped to +-thres_emb after each step (authors' code)
    hard: bool = True  # binarised gates 1[e>0] at test and in the cumulative attention
    # not gated: the per-task heads
    dense_layers: list[str] = field(default_factory=lambda: ["head"])


def anneal_s(b: int, n: int, smax: float) -> float:
    """s at batch `b` (0-based) of `n`: 1/smax + (smax - 1/smax) b / (n - 1) (HAT eq. 3)."""
    if n <= 1:
        return smax
    return 1 / smax + (smax - 1 / smax) * b / (n - 1)


def compensation(e: torch.Tensor, s: float, smax: float, thres_cosh: float) -> torch.Tensor:
    """The factor on the embedding gradient (HAT eq. 6): smax [cosh(s e) + 1] /
    (s [cosh(e) + 1]), with s e clamped to +-thres_cosh against overflow (as the authors'
    code)."""
    num = torch.cosh(torch.clamp(s * e, -thres_cosh, thres_cosh)) + 1
    return smax / s * num / (torch.cosh(e) + 1)


@defaults_from(HATConf)
class HAT(TaskAware):
    """HAT (Serrà et al., ICML 2018, "Overcoming Catastrophic Forgetting with Hard
    Attention to the Task"). Every unit (output feature or channel) of each layer but the
    head is multiplied by a gate a = sigmoid(s e_t) of a learned task embedding e_t; s is
    annealed from 1/smax to smax over the batches of each epoch (`anneal=epoch`, eq. 3;
    `anneal=task`: over the task) and is smax at test. The weight gradient of unit i from
    unit j is scaled by 1 - min(A_i, A_j) with A the elementwise max of earlier tasks'
    gates (eq. 4; biases by 1 - A_i); the embedding gradient is compensated (eq. 6) and
    the embeddings clamped to +-thres_emb after each step (the authors' code). The loss
    adds c sum(a (1 - A)) / sum(1 - A) over all layers (eq. 5). Defaults: smax 400,
    c 0.75 (the authors' grid search).
    `hard=true` (a choice of ours, the paper being silent) uses the binarised gates
    1[e > 0] (the limit of sigmoid(smax e)) at test and in A, so old tasks' outputs are
    bitwise unchanged; `hard=false` uses sigmoid(smax e) as the paper. Units counted in
    `capacity_*` are those whose hard gate is on. The gates are applied right after the
    layer (before ReLU and pooling, with which a positive per-unit scale commutes)."""

    supported_scenarios = ("task_il",)
    # the annealing step within the task and its gate masks are outside state_dict: a run
    # resumes from the task's start
    resumes_in_task = False
    # the gates are set by each step (and by predict_logits): `model(x)` outside them is
    # not the model's output, so no class_logits for plugins
    provides = frozenset({"step_logits", "cross_entropy"})

    def __init__(self, smax: float, c: float, anneal: str,
                 thres_cosh: float, thres_emb: float, hard: bool,
                 dense_layers: list[str] | tuple, **kw):
        if smax <= 1:
            raise ValueError(f"method.smax={smax} must be > 1")
        if c < 0:
            raise ValueError(f"method.c={c} must be >= 0")
        if anneal not in ("epoch", "task"):
            raise ValueError(f"method.anneal={anneal!r}: choose 'epoch' or 'task'")
        self.smax, self.c, self.anneal = smax, c, anneal
        self.thres_cosh, self.thres_emb, self.hard = thres_cosh, thres_emb, hard
        self.dense_layers = list(dense_layers)
        self._gates: list[torch.Tensor] = []
        if anneal == "task":
            self.needs = frozenset({"planned_steps"})
        super().__init__(**kw)
        self.step, self.s, self.n_train, self.per_epoch = 0, smax, 0, 1

    def wrap_model(self, model):
        self.layers = view_layers(model, self.dense_layers, "method.dense_layers")
        n_tasks = self.class_mask.shape[0]
        units = [layer.weight.shape[0] for layer in self.layers.values()]
        model.hat_embeddings = nn.ParameterList(
            nn.Parameter(torch.randn(n_tasks, u, device=self.class_mask.device)) for u in units)
        self.emb = model.hat_embeddings
        self.A = [torch.zeros(u, device=self.class_mask.device) for u in units]
        for i, layer in enumerate(self.layers.values()):
            layer.register_forward_hook(self._gate_hook(i))
            ins = layer.weight.shape[1]
            if i and ins % units[i - 1]:
                raise ValueError(f"method=hat: layer {i} takes {ins} inputs, not a multiple "
                                 f"of the {units[i - 1]} units before it (a chain of layers)")
        return model

    def _gate_hook(self, i: int):
        def hook(module, inputs, output):
            g = self._gates[i]
            lead = (len(output),) if g.dim() == 2 else ()
            return output * g.view(*lead, g.shape[-1], *[1] * (output.dim() - 2))
        return hook

    def _test_gates(self, e: torch.Tensor) -> torch.Tensor:
        return e.gt(0).to(e.dtype) if self.hard else torch.sigmoid(self.smax * e)

    def _in_gate(self, i: int, out_gates: list[torch.Tensor]) -> torch.Tensor | None:
        """Layer i's input units' gates expanded to its inputs (a flattened conv map
        repeats each channel's gate over its positions)."""
        if i == 0:
            return None
        ins = list(self.layers.values())[i].weight.shape[1]
        prev = out_gates[i - 1]
        return prev.repeat_interleave(ins // prev.shape[-1], dim=-1)

    # -- phases ---------------------------------------------------------------------------
    def train_data(self, task):
        data = super().train_data(task)
        self.n_train = len(data)
        return data

    def before_task(self, task):
        super().before_task(task)
        self.step = 0
        self._wmask, self._bmask = [], []
        for i, layer in enumerate(self.layers.values()):
            out = 1 - self.A[i]
            inp = self._in_gate(i, self.A)
            shape = (-1, *[1] * (layer.weight.dim() - 1))
            if inp is None:
                w = out.view(shape).expand_as(layer.weight)
            else:
                w = 1 - torch.minimum(self.A[i].view(shape), inp.view(1, -1, *shape[2:]))
                w = w.expand_as(layer.weight)
            self._wmask.append(w.contiguous())
            self._bmask.append(out)
            layer.set_view(torch.ones_like(layer.mask, dtype=torch.bool), w.gt(0))

    def _s_at(self, step: int, batch_len: int) -> float:
        if self.anneal == "task":
            return anneal_s(step, self.task_steps, self.smax)
        if step == 0:  # the task's first batch is a full one (the last may be short)
            self.per_epoch = max(1, math.ceil(self.n_train / batch_len))
        return anneal_s(step % self.per_epoch, self.per_epoch, self.smax)

    def loss(self, batch):
        self.s = self._s_at(self.step, len(batch))
        t = self.task
        gates = [torch.sigmoid(self.s * e[t]) for e in self.emb]
        self._gates = gates
        terms = super().loss(batch)
        if self.c:
            free = [1 - a for a in self.A]
            reg = sum((a * f).sum() for a, f in zip(gates, free, strict=True))
            # every unit taken by earlier tasks: nothing to regularise (not 0 / 0)
            terms["reg"] = self.c * reg / sum(f.sum() for f in free).clamp(min=1)
        return terms

    @torch.no_grad()
    def after_backward(self, batch):
        if self.task > 0:
            for i, layer in enumerate(self.layers.values()):
                if layer.weight.grad is not None:
                    layer.weight.grad.mul_(self._wmask[i])
                if layer.bias is not None and layer.bias.grad is not None:
                    layer.bias.grad.mul_(self._bmask[i])
        t = self.task
        for e in self.emb:
            if e.grad is not None:
                e.grad[t] *= compensation(e[t], self.s, self.smax, self.thres_cosh)

    @torch.no_grad()
    def after_step(self, batch):
        self.step += 1
        for e in self.emb:
            e.clamp_(-self.thres_emb, self.thres_emb)

    @torch.no_grad()
    def after_task(self, task):
        for i, e in enumerate(self.emb):
            self.A[i] = torch.maximum(self.A[i], self._test_gates(e[task.id]))

    @torch.no_grad()
    def predict_logits(self, x, task_ids=None):
        t = torch.full((len(x),), max(self.task, 0), device=x.device) \
            if task_ids is None else task_ids
        saved = self._gates
        self._gates = [self._test_gates(e[t]) for e in self.emb]
        try:
            return self.model(x)
        finally:
            self._gates = saved

    # -- reporting and state ---------------------------------------------------------------
    def summary(self):
        total = sum(len(a) for a in self.A)
        per_task, seen = [], [torch.zeros_like(a, dtype=torch.bool) for a in self.A]
        for t in range(self.task + 1):
            on = [e[t].detach().gt(0) for e in self.emb]
            per_task.append(sum(int((o & ~s).sum()) for o, s in zip(on, seen, strict=True)) / total)
            seen = [o | s for o, s in zip(on, seen, strict=True)]
        return {**super().summary(), "capacity_unit": "units",
                "capacity_per_task": per_task, "capacity_used": sum(per_task),
                "mask_bytes": (self.task + 1) * math.ceil(total / 8)}

    def state_dict(self):
        return {**super().state_dict(), "hat": {"A": self.A, "task": self.task}}

    def load_state_dict(self, state):
        state = {**state, "optimizer": self.optimizer.state_dict()}  # rebuilt per task
        super().load_state_dict(state)
        self.A = [a.to(self.class_mask.device) for a in state["hat"]["A"]]
        self.task = state["hat"]["task"]
