"""Incremental rank updates (Hyder, Shao, Hou, Markopoulos, Prater-Bennette & Asif,
"Incremental Task Learning with Incremental Rank Updates", ECCV 2022; code
CSIPlab/task-increment-rank-update) as a task-IL plugin.

Model surgery: every hidden `nn.Linear` (m x n) becomes a `RankUpdateLinear` whose weight
for task t is W^(t) = sum_{i<=t} s^(t)_i U_i V_i^T, computed as ((x V) * s^(t)) U^T, with
U_i (m x r_i), V_i (n x r_i) the factors added by task i and s^(t) the selector of task
t over all K_t = r_0 + ... + r_t factors; each task also has its own bias. The head
(`model.head`) becomes a `TaskHead`: each task its own rows (its classes). While task t
trains only its factors, selector, biases and head rows are trainable, and the optimiser
is rebuilt over them (as the authors' code builds a new Adam per task); everything of
earlier tasks is frozen, so their predictions are exactly preserved. Prediction runs each
sample through its own task's weights (task ids from the evaluator).

Following the authors' code (their MLP notebook): the first task has no full-rank base,
only `first_rank` factors (their r1 = 11 for a 256-wide MLP, later tasks r2 = 1); factors
are initialised orthogonally, the new task's selector is 1 on its new factors and 0 on
the old ones, biases start at 0 (`warm_start=true` instead starts a task's selector and
biases from the previous task's). The head rows start from the model's own initial head
(their code: a new orthogonally initialised head per task). Convolutions are not
factorised: a model with trainable parameters outside its linear layers is refused.

Parameters stored for task t (0-based), per hidden layer (n in, m out):
r_t (n + m) + K_t + m, plus the head's k_t (d + 1) for its k_t classes on a d-wide
feature; `rank_update.csv` in the run directory lists them per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import register_flops, weight_and_input_grads
from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


class _Active:
    """The task whose weights the wrapped layers compute with (shared by all of them)."""

    def __init__(self):
        self.task = 0


class RankUpdateLinear(nn.Module):
    """A linear layer with per-task low-rank factors and selectors (Hyder et al., 2022)."""

    def __init__(self, base: nn.Linear, ranks: list[int], active: _Active):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.ranks = list(ranks)
        self.active = active
        self.has_bias = base.bias is not None
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        seen = 0
        for t, r in enumerate(ranks):
            u = nn.init.orthogonal_(torch.empty(self.out_features, r, **kw))
            v = nn.init.orthogonal_(torch.empty(self.in_features, r, **kw))
            s = torch.cat([torch.zeros(seen, **kw), torch.ones(r, **kw)])
            seen += r
            self.register_parameter(f"u{t}", nn.Parameter(u))
            self.register_parameter(f"v{t}", nn.Parameter(v))
            self.register_parameter(f"s{t}", nn.Parameter(s))
            if self.has_bias:
                self.register_parameter(f"b{t}", nn.Parameter(torch.zeros(self.out_features, **kw)))

    def rank(self, t: int) -> int:
        """K_t, the number of factors task t's weight combines."""
        return sum(self.ranks[: t + 1])

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        names = ("u", "v", "s", "b") if self.has_bias else ("u", "v", "s")
        return [getattr(self, f"{n}{t}") for n in names]

    def _factors(self, name: str, t: int) -> torch.Tensor:
        parts = [getattr(self, f"{name}{i}") for i in range(t + 1)]
        return parts[0] if t == 0 else torch.cat(parts, 1)

    def weight_of(self, t: int) -> torch.Tensor:
        """W^(t), m x n (for inspection; the forward never forms it)."""
        return (self._factors("u", t) * getattr(self, f"s{t}")) @ self._factors("v", t).T

    def forward(self, x):
        t = self.active.task
        z = (x @ self._factors("v", t)) * getattr(self, f"s{t}")
        y = z @ self._factors("u", t).T
        return y + getattr(self, f"b{t}") if self.has_bias else y


def _rank_forward(m: RankUpdateLinear, inputs, output) -> int:
    """x V (2 N n K) and (x V s) U^T (2 N K m)."""
    n_rows = inputs[0].numel() // m.in_features
    return 2 * n_rows * m.rank(m.active.task) * (m.in_features + m.out_features)


def _rank_backward(m: RankUpdateLinear, inputs, output, forward) -> int:
    """What autograd runs: the gradient of x V s (2 N m K) when s, V or x needs one, of
    the concatenated U (2 N m K) and V (2 N n K) when a factor of theirs trains, and of x
    (2 N n K) when the input needs one."""
    t, x = m.active.task, inputs[0]
    n_rows, k = x.numel() // m.in_features, m.rank(t)
    trains = {name: any(getattr(m, f"{name}{i}").requires_grad for i in range(t + 1))
              for name in ("u", "v")}
    s_trains = getattr(m, f"s{t}").requires_grad
    flops = 0
    if s_trains or trains["v"] or x.requires_grad:
        flops += 2 * n_rows * m.out_features * k
    if trains["u"]:
        flops += 2 * n_rows * m.out_features * k
    flops += 2 * n_rows * m.in_features * k * (trains["v"] + x.requires_grad)
    return flops


register_flops(RankUpdateLinear, _rank_forward, backward=_rank_backward)


class TaskHead(nn.Module):
    """An output layer with each task's own rows (its classes); the other logits are 0."""

    def __init__(self, head: nn.Linear, class_mask: torch.Tensor, active: _Active):
        super().__init__()
        self.in_features, self.out_features = head.in_features, head.out_features
        self.active = active
        self.has_bias = head.bias is not None
        for t, row in enumerate(class_mask):
            idx = row.nonzero().flatten().to(head.weight.device)
            self.register_buffer(f"classes{t}", idx, persistent=False)
            self.register_parameter(f"w{t}", nn.Parameter(head.weight.detach()[idx].clone()))
            if self.has_bias:
                self.register_parameter(f"b{t}", nn.Parameter(head.bias.detach()[idx].clone()))

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return [getattr(self, f"w{t}")] + ([getattr(self, f"b{t}")] if self.has_bias else [])

    def forward(self, x):
        t = self.active.task
        own = F.linear(x, getattr(self, f"w{t}"), getattr(self, f"b{t}", None))
        out = own.new_zeros(*x.shape[:-1], self.out_features)
        return out.index_copy(x.dim() - 1, getattr(self, f"classes{t}"), own)


def _head_forward(m: TaskHead, inputs, output) -> int:
    """2 x inputs x the active task's classes."""
    return 2 * inputs[0].numel() * len(getattr(m, f"classes{m.active.task}"))


register_flops(TaskHead, _head_forward, backward=weight_and_input_grads)


@schema("plugin", "rank_update")
@dataclass
class RankUpdateConf(PluginConf):
    _target_: str = "cl_bench.plugins.rank_update.RankUpdate"
    rank: int = 1  # factors each later task adds per layer
    first_rank: int | None = 10  # factors of the first task (the authors' MLP: 11); null: rank
    warm_start: bool = False  # start a task's selector and biases from the previous task's


@defaults_from(RankUpdateConf)
class RankUpdate(Plugin):
    """Incremental rank updates (Hyder et al., ECCV 2022): per-task rank-r factors added to
    every hidden linear layer, a per-task selector over all factors so far, per-task
    biases and head rows; earlier tasks' parts frozen. Task-IL only (predictions need the
    sample's task)."""

    needs = frozenset({"plain_model", "base_prediction"})
    nearest = "method=rank_update (finetune with plugin rank_update)"
    predict_needs_task_ids = True
    removes = frozenset({"steady_parameters"})  # each task trains its own parameters

    supported_scenarios = ("task_il",)

    def __init__(self, rank: int, first_rank: int | None, warm_start: bool):
        first = rank if first_rank is None else first_rank
        for key, value in (("rank", rank), ("first_rank", first)):
            if value < 1:
                raise ValueError(f"plugins.rank_update.{key}={value} must be >= 1")
        self.rank, self.first_rank, self.warm_start = rank, first, warm_start
        self.active = _Active()
        self.layers: list[RankUpdateLinear] = []
        self.head: TaskHead | None = None
        self.dense_parameters = 0

    def wrap_model(self, model):
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError("plugin=rank_update needs a model whose output layer is the "
                             "nn.Linear `model.head` (e.g. model=mlp)")
        self.dense_parameters = sum(p.numel() for p in model.parameters())
        n_tasks = self.method.class_mask.shape[0]
        ranks = [self.first_rank] + [self.rank] * (n_tasks - 1)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and child is not head:
                    layer = RankUpdateLinear(child, ranks, self.active)
                    setattr(parent, name, layer)
                    self.layers.append(layer)
        self.head = TaskHead(head, self.method.class_mask, self.active)
        model.head = self.head
        others = [name for name, m in model.named_modules()
                  if not isinstance(m, (RankUpdateLinear, TaskHead))
                  and any(p.requires_grad for p in m.parameters(recurse=False))]
        if others:
            raise ValueError(f"plugin=rank_update factorises nn.Linear layers only, but "
                             f"{others} have trainable parameters too; use model=mlp (or "
                             "freeze them)")
        self._train_only(0)
        return model

    def _parts(self):
        return [*self.layers, self.head]

    def _train_only(self, t: int) -> None:
        n_tasks = self.method.class_mask.shape[0]
        for part in self._parts():
            for i in range(n_tasks):
                for p in part.task_parameters(i):
                    p.requires_grad_(i == t)

    def task_parameter_count(self, t: int) -> int:
        """Parameters task t adds: its factors, selectors, biases and head rows."""
        return sum(p.numel() for part in self._parts() for p in part.task_parameters(t))

    @torch.no_grad()
    def before_task(self, task):
        t = self.active.task = task.id
        if self.warm_start and t > 0:
            for layer in self.layers:
                prev = getattr(layer, f"s{t - 1}")
                getattr(layer, f"s{t}")[: len(prev)] = prev
                if layer.has_bias:
                    getattr(layer, f"b{t}").copy_(getattr(layer, f"b{t - 1}"))
        self._train_only(t)
        self.method.reset_optimizer()  # a new optimiser over task t's parameters only

    def after_task(self, task):
        rows, total = [], 0
        for t in range(task.id + 1):
            n = self.task_parameter_count(t)
            total += n
            rows.append([t, n, total, self.dense_parameters])
        self.method.ctx.artifacts.write_csv(
            "rank_update.csv", ["task", "params", "params_total", "dense_model_params"], rows)

    def resume_task(self, task):
        self.active.task = task.id

    def predict(self, x, task_ids):
        if task_ids is None:
            return None  # the current task's network
        current = self.active.task
        out = None
        try:
            for t in torch.unique(task_ids).tolist():
                self.active.task = t
                rows = task_ids == t
                logits = self.method.model(x[rows])
                if out is None:
                    out = logits.new_zeros(len(x), logits.shape[1])
                out[rows] = logits
        finally:
            self.active.task = current
        return out
