"""SupSup, and the base of the per-task supermask methods (ExSSNeT, WSN, SoftNet)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cl_bench.errors import ConfigError
from cl_bench.methods.base import Method, MethodConf
from cl_bench.models.task_masked import selecting, unpack_bits, wrap_task_masked
from cl_bench.schemas import defaults_from, schema


@schema("method", "supermask")
@dataclass
class SupermaskConf(MethodConf):
    density: float = 0.1          # kept fraction per layer ("sparsity" in the papers' code)
    infer_task: bool = False      # predict(x) without task ids: SupSup's one-shot task inference
    infer_batch: int = 64         # samples sharing one inferred task id
    weight_init: str = "signed_constant"  # signed_constant | keep (the model's own init)


class SupermaskMethod(Method):
    """Per-task binary masks over shared weights (`cl_bench.models.task_masked`): every
    Linear/Conv2d is task-masked, a task's mask is stored bit-packed at its end, and
    `predict(x, task_ids)` runs each sample under its task's mask (a task not finished yet:
    the live mask). The model keeps its single head over all classes; task-IL scoring masks
    the other tasks' logits (the runner's class mask), where the papers use per-task heads;
    since every head weight is masked too, the two agree up to which weights a task may use.

    Without task ids (`class_il`/`domain_il` scoring), `infer_task=true` picks each chunk of
    `infer_batch` samples' task by SupSup's one-shot rule (Wortsman et al., NeurIPS 2020):
    superpose the stored masks with alphas = 1/T, take one gradient of the mean output
    entropy (softmax over the seen classes) w.r.t. the alphas, pick the most negative
    component, then run the chunk under that task's mask. A chunk spanning two tasks'
    samples gets one id (the paper assumes a batch from one task). `infer_task=false`:
    predict(x) uses the last finished task's mask. With `infer_task=true` each mask trains
    with cross-entropy over the whole head (SupSup's GNu setting: otherwise the logits of
    other tasks' classes are left free, and the entropy cannot tell the masks apart); task-IL
    scoring still masks the other tasks' logits. The evaluator hands the true ids
    afterwards (`see_task_ids`), which score the inference (`task_infer_acc`) and never
    enter a prediction. A subclass sets which parameters train (`before_task`)."""

    predict_needs_task_ids = True
    supported_streams = ("task",)
    trains_weights = False
    soft = 0.0

    def __init__(self, density: float, infer_task: bool, infer_batch: int,
                 weight_init: str, **kw):
        super().__init__(**kw)
        if infer_batch < 1:
            raise ConfigError(f"method.infer_batch={infer_batch} must be >= 1")
        self.density, self.infer_task, self.infer_batch = density, infer_task, infer_batch
        self.weight_init = weight_init
        self.n_tasks = self.class_mask.shape[0]
        self.learned: list[int] = []
        self.current = 0
        self.mask_fixed = False  # the current task's mask is stored (ExSSNeT's weight phase)
        self._inferred: torch.Tensor | None = None
        self._infer_hits = torch.zeros(2)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        self.layers = list(wrap_task_masked(model, self.n_tasks, self.density, self.soft,
                                            self.weight_init).values())
        for m in self.layers:
            m.weight.requires_grad_(self.trains_weights)
        return model

    # -- phases -------------------------------------------------------------------------
    def before_task(self, task):
        self.current, self.mask_fixed = task.id, False
        for m in self.layers:
            m.select = "live"
        self.reset_optimizer()

    def after_task(self, task):
        if not self.mask_fixed:
            for m in self.layers:
                m.store(task.id)
        self.learned.append(task.id)
        self._infer_hits = torch.zeros(2)

    def resume_task(self, task):
        self.learned.append(task.id)

    # -- masks --------------------------------------------------------------------------
    def selection(self, task: int):
        """What the layers compute with for `task`: its stored mask once it has one."""
        if task in self.learned or (task == self.current and self.mask_fixed):
            return task
        return "live"

    def used_masks(self, tasks=None) -> list[torch.Tensor]:
        """Per layer, the union (bool) of the stored masks of `tasks` (default: learned)."""
        tasks = self.learned if tasks is None else tasks
        out = []
        for m in self.layers:
            used = torch.zeros(m.weight.shape, dtype=torch.bool, device=m.weight.device)
            for t in tasks:
                used |= unpack_bits(m.packed[t], m.weight.shape)
            out.append(used)
        return out

    def loss_logits(self, logits, task_ids):
        if self.infer_task:  # SupSup's GNu: over the whole head, so masks compare by entropy
            return logits
        return super().loss_logits(logits, task_ids)

    # -- prediction ---------------------------------------------------------------------
    def predict_logits(self, x, task_ids=None):
        if task_ids is None:
            if self.infer_task and len(self.learned) > 1:
                task_ids = self._inferred = self.infer_tasks(x)
            else:
                last = self.learned[-1] if self.learned else self.current
                task_ids = torch.full((len(x),), last, device=x.device)
        out = None
        for t in task_ids.unique().tolist():  # eval only: one host sync per batch
            idx = (task_ids == t).nonzero().squeeze(1)
            with selecting(self.layers, self.selection(t)):
                logits = self.model(x[idx])
            if out is None:
                out = logits.new_empty(len(x), logits.shape[1])
            out[idx] = logits
        return out

    def infer_tasks(self, x: torch.Tensor) -> torch.Tensor:
        """SupSup's one-shot task id of each chunk of `infer_batch` samples (repeated per
        sample), among the finished tasks."""
        with torch.inference_mode(False), torch.enable_grad():
            tasks = torch.tensor(self.learned, device=x.device)
            ids = torch.empty(len(x), dtype=torch.long, device=x.device)
            x = x.clone()
            for s in range(0, len(x), self.infer_batch):
                alphas = torch.full((len(tasks),), 1 / len(tasks), device=x.device,
                                    requires_grad=True)
                with selecting(self.layers, ("superpose", self.learned, alphas)):
                    logits = self.model(x[s:s + self.infer_batch])
                logp = logits[:, self.seen_mask].log_softmax(1)
                entropy = -(logp.exp() * logp).sum(1).mean()
                (grad,) = torch.autograd.grad(entropy, alphas)
                ids[s:s + self.infer_batch] = tasks[grad.argmin()]
        return ids

    def see_task_ids(self, task_ids: torch.Tensor) -> None:
        """The true task ids of the batch the last `predict(x)` inferred (evaluator)."""
        if self._inferred is None or len(self._inferred) != len(task_ids):
            return
        known = torch.isin(task_ids, torch.tensor(self.learned, device=task_ids.device))
        hits = ((self._inferred == task_ids) & known).sum()
        self._infer_hits = self._infer_hits.to(task_ids.device) + torch.stack(
            [hits, known.sum()]).float()
        self._inferred = None

    # -- reporting ----------------------------------------------------------------------
    def summary(self) -> dict:
        out = super().summary()
        n = sum(m.weight.numel() for m in self.layers)
        used = [torch.zeros_like(m.weight, dtype=torch.bool) for m in self.layers]
        per_task = []
        for t in self.learned:
            new = 0
            for u, m in zip(used, self.layers, strict=True):
                mask = unpack_bits(m.packed[t], m.weight.shape)
                new += int((mask & ~u).sum())
                u |= mask
            per_task.append(new / n)
        out.update(
            capacity_per_task=per_task, capacity_used=sum(per_task),
            mask_bytes=len(self.learned) * sum(m.packed.shape[1] for m in self.layers),
            mask_density=self.density)
        if self.infer_task and float(self._infer_hits[1]) > 0:
            out["task_infer_acc"] = float(self._infer_hits[0] / self._infer_hits[1])
        return out


@defaults_from(SupermaskConf)
class SupSup(SupermaskMethod):
    """SupSup, "Supermasks in Superposition" (Wortsman et al., NeurIPS 2020): the weights
    are random signed constants and never train; each task learns only the scores of its
    supermask (fresh Kaiming-uniform scores per task), so with task ids nothing is
    forgotten. Task inference: `infer_task=true` (see `SupermaskMethod`)."""

    def before_task(self, task):
        for m in self.layers:
            with torch.no_grad():
                nn.init.kaiming_uniform_(m.scores, a=5 ** 0.5)
        super().before_task(task)
