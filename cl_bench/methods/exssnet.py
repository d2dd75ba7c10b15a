"""ExSSNeT: exclusive supermask subnetwork training, with KNN knowledge transfer (KKT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.errors import ConfigError
from cl_bench.methods.supsup import SupermaskConf, SupermaskMethod
from cl_bench.models.task_masked import selecting
from cl_bench.schemas import defaults_from, schema


@schema("method", "exssnet")
@dataclass
class ExSSNeTConf(SupermaskConf):
    mask_fraction: float = 0.5   # share of each task's steps spent on the mask (then weights)
    exclusive: bool = True       # false: SSNeT, training every weight of the mask (control)
    weight_lr: float | None = None  # the weight phase's learning rate (null: optimizer.lr)
    kkt: bool = True
    knn_k: int = 200
    knn_samples: int = 1000      # training samples of the new task the k-NN sees (66% fit)


@defaults_from(ExSSNeTConf)
class ExSSNeT(SupermaskMethod):
    """ExSSNeT (Yadav & Bansal, CVPR 2023, "Exclusive Supermask Subnetwork Training for
    Continual Learning"): each task first learns a supermask over the shared weights (as
    SupSup, weights fixed), for the first `mask_fraction` of its steps, then trains the
    weights its mask selects that no earlier task's mask selects (the exclusive ones;
    `exclusive=false` trains all of the mask's weights, SSNeT, which forgets). KKT: before a
    task, a k-NN (k=`knn_k`, Euclidean) fits 66% of `knn_samples` of its training data on the
    penultimate features under each earlier mask and scores the rest; when the best one
    beats chance (1/classes of the task), the task's scores start as a copy of that task's
    (`kkt_choice` in the summary, -1 for a fresh start). The reference code runs the two
    phases as separate epoch counts; here they split the task's step budget; the weight
    phase has its own learning rate (`weight_lr`; mask 0.01, weights 0.001 in its README).
    The weights start as signed constants, as in the reference code."""

    # the phase within the task and its optimiser are outside state_dict: a run resumes
    # from the task's start
    resumes_in_task = False

    def __init__(self, mask_fraction: float, exclusive: bool,
                 weight_lr: float | None, kkt: bool, knn_k: int,
                 knn_samples: int, **kw):
        super().__init__(**kw)
        if not 0 < mask_fraction <= 1:
            raise ConfigError(f"method.mask_fraction={mask_fraction} must be in (0, 1]")
        if knn_k < 1 or knn_samples < 3:
            raise ConfigError(f"method.knn_k={knn_k} must be >= 1 and method.knn_samples="
                              f"{knn_samples} >= 3")
        if kkt and not isinstance(getattr(self.model, "features", None), nn.Module):
            raise ConfigError("method.kkt=true needs a model with a `features` module (its "
                              "penultimate features): model=mlp or model=convnet, or "
                              "method.kkt=false")
        if weight_lr is not None and weight_lr <= 0:
            raise ConfigError(f"method.weight_lr={weight_lr} must be > 0 (or null)")
        self.mask_fraction, self.exclusive, self.kkt = mask_fraction, exclusive, kkt
        self.weight_lr = weight_lr
        self.knn_k, self.knn_samples = knn_k, knn_samples
        if mask_fraction < 1:  # the weight phase starts at a share of the planned steps
            self.needs = frozenset({"planned_steps"})
            # the scores train, then the weights: the trainable set changes within a task
            self.provides = self.provides - {"steady_parameters"}
        self.task_scores: dict[int, list[torch.Tensor]] = {}
        self.kkt_choice: list[int] = []
        self.kkt_acc: list[list[float]] = []
        self._steps = 0

    def before_task(self, task):
        choice = self._knn_transfer(task) if self.kkt and self.learned else -1
        self.kkt_choice.append(choice)
        with torch.no_grad():
            for i, m in enumerate(self.layers):
                if choice >= 0:
                    m.scores.copy_(self.task_scores[choice][i])
                else:
                    nn.init.kaiming_uniform_(m.scores, a=5 ** 0.5)
                m.scores.requires_grad_(True)
                m.weight.requires_grad_(False)
        self._steps = 0
        super().before_task(task)

    def after_step(self, batch):
        self._steps += 1
        if (not self.mask_fixed and self.mask_fraction < 1
                and self._steps >= round(self.mask_fraction * self.task_steps)):
            self._start_weight_phase()

    def _start_weight_phase(self):
        self.mask_fixed = True
        used = self.used_masks()
        self._editable = []
        for m, u in zip(self.layers, used, strict=True):
            m.store(self.current)
            mask = m.stored_mask(self.current).bool()
            editable = mask & ~u if self.exclusive else mask
            self._editable.append(editable.to(m.weight.dtype))
            m.grad_frac = float(editable.sum()) / m.weight.numel()
            m.select = self.current
            m.scores.requires_grad_(False)
            m.weight.requires_grad_(True)
        self.reset_optimizer()
        for group in self.optimizer.param_groups:
            if self.weight_lr is not None:
                group["lr"] = self.weight_lr
            if group.get("weight_decay", 0):
                raise ConfigError("exssnet needs optimizer.weight_decay=0: decay would move "
                                  "the weights earlier tasks use")

    def after_backward(self, batch):
        if self.mask_fixed:
            for m, editable in zip(self.layers, self._editable, strict=True):
                if m.weight.grad is not None:
                    m.weight.grad.mul_(editable)

    def after_task(self, task):
        if not self.mask_fixed:
            for m in self.layers:
                m.store(task.id)
            self.mask_fixed = True
        if self.kkt:
            self.task_scores[task.id] = [m.scores.detach().clone() for m in self.layers]
        super().after_task(task)

    @torch.no_grad()
    def _knn_transfer(self, task) -> int:
        data = self.train_data(task)
        gen = torch.Generator().manual_seed(task.id)
        idx = torch.randperm(len(data), generator=gen)[: self.knn_samples].to(data.y.device)
        x, y = self.preprocess(data.x[idx], train=False), data.y[idx]
        fit = int(0.66 * len(idx))
        k = min(self.knn_k, fit)
        counter = self.counter
        before = counter.eval_flops, counter.eval_flops_dense
        accs = []
        with counter.evaluating():  # k-NN overhead: kept out of the training FLOPs
            for t in self.learned:
                with selecting(self.layers, t):
                    feats = self.model.features(x).flatten(1)
                dist = torch.cdist(feats[fit:], feats[:fit])
                near = dist.topk(k, largest=False).indices
                votes = F.one_hot(y[:fit][near], self.class_mask.shape[1]).sum(1)
                accs.append((votes.argmax(1) == y[fit:]).float().mean())
        counter.add_overhead(counter.eval_flops - before[0], "kkt")
        counter.eval_flops, counter.eval_flops_dense = before
        accs = torch.stack(accs)
        self.kkt_acc.append(accs.tolist())
        best = int(accs.argmax())
        return self.learned[best] if float(accs[best]) > 1 / len(task.classes) else -1

    def summary(self) -> dict:
        # KKT keeps each finished task's real-valued scores (as the reference code): float
        # memory beside the bit-packed masks
        scores_bytes = sum(s.numel() * s.element_size()
                           for scores in self.task_scores.values() for s in scores)
        return {**super().summary(), "kkt_choice": self.kkt_choice,
                "kkt_scores_bytes": scores_bytes}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "task_scores": self.task_scores,
                "kkt_choice": self.kkt_choice}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.task_scores, self.kkt_choice = state["task_scores"], state["kkt_choice"]
