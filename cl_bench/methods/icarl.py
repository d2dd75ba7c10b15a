"""iCaRL: herding exemplars, nearest-mean-of-exemplars classifier, distillation."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from cl_bench.methods.base import Method


class ICaRL(Method):
    """iCaRL (Rebuffi et al., CVPR 2017, "iCaRL: Incremental Classifier and Representation
    Learning"). Each task trains on its data joined with the exemplars, with sigmoid
    binary cross-entropy over the classes seen: one-hot targets for the new classes, the
    previous network's sigmoid outputs for the old ones (distillation). At the end of a
    task the memory (`memory=herding`) herds exemplars on the features, and prediction is
    the nearest mean of exemplars (NME) in L2-normalised feature space."""

    supported_scenarios = ("class_il", "task_il")
    needs_memory = True

    def __init__(self, **kw):
        super().__init__(**kw)
        if not hasattr(self.memory, "select"):
            raise ValueError("method=icarl needs memory=herding (exemplars herded on features)")
        self.old_model = None
        self.prototypes: torch.Tensor | None = None  # (n_classes, d); unseen classes NaN
        self.seen = torch.zeros_like(self.class_mask[0])
        self.old = torch.zeros_like(self.seen)

    def before_task(self, task):
        self.old = self.seen.clone()
        self.seen = self.seen | self.class_mask[task.id]

    def train_data(self, task):
        x, y, t = super().train_data(task)
        if not len(self.memory):
            return x, y, t
        n = len(self.memory)
        mem = self.memory.x[:n], self.memory.y[:n], self.memory.task[:n]
        return tuple(torch.cat([a, b.to(a.device)]) for a, b in zip((x, y, t), mem, strict=True))

    def loss(self, x, y, task_ids):
        inputs = self.preprocess(x, train=True)
        logits = self.model(inputs)
        target = F.one_hot(y, logits.shape[1]).float()
        if self.old_model is not None:
            with torch.no_grad():
                old = torch.sigmoid(self.old_model(inputs))
            target = torch.where(self.old, old, target)
        if self.scenario == "task_il":
            cols = self.class_mask[task_ids]
            return F.binary_cross_entropy_with_logits(logits[cols], target[cols])
        return F.binary_cross_entropy_with_logits(logits[:, self.seen], target[:, self.seen])

    def after_task(self, task):
        self.model.eval()
        with torch.no_grad():
            feats = self.model.features(self.preprocess(task.train_x))
            self.memory.select(task.train_x, task.train_y,
                               torch.full_like(task.train_y, task.id), feats)
            self.update_prototypes()
        self.model.train()
        self.old_model = copy.deepcopy(self.model).requires_grad_(False).eval()

    def update_prototypes(self) -> None:
        n = len(self.memory)
        feats = F.normalize(self.model.features(self.preprocess(self.memory.x[:n])), dim=1)
        y = self.memory.y[:n].to(feats.device)
        sums = torch.zeros(len(self.seen), feats.shape[1], device=feats.device)
        sums.index_add_(0, y, feats)
        counts = torch.bincount(y, minlength=len(self.seen)).unsqueeze(1)
        self.prototypes = F.normalize(sums / counts, dim=1)  # NaN rows: classes never seen

    def predict(self, x):
        if self.prototypes is None:
            return self.model(x)
        feats = F.normalize(self.model.features(x).float(), dim=1)  # float under autocast too
        dist = torch.cdist(feats, self.prototypes)
        return (-dist).nan_to_num(nan=float("-inf"))

    def state_dict(self):
        return {**super().state_dict(), "old_model": self.old_model, "prototypes":
                self.prototypes, "seen": self.seen, "old": self.old}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.old_model, self.prototypes = state["old_model"], state["prototypes"]
        self.seen, self.old = state["seen"], state["old"]
