"""iCaRL: herding exemplars, nearest-mean-of-exemplars classifier, distillation."""

from __future__ import annotations

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
    memory_needs = frozenset({"select"})
    memory_hint = "choose memory=herding (exemplars herded on features)"
    provides = frozenset({"class_logits", "step_logits"})  # its loss is BCE, not cross_entropy

    def __init__(self, **kw):
        super().__init__(**kw)
        self.old_model = None
        self.prototypes: torch.Tensor | None = None  # (n_classes, d); unseen classes NaN

    def train_data(self, task):
        data = super().train_data(task)
        if not len(self.memory):
            return data
        return data.cat(self.memory.stored().to(data.y.device))

    def loss(self, batch):
        logits = self.forward(batch.x)
        inputs, _ = self.forward_of(batch.x)
        target = F.one_hot(batch.y, logits.shape[1]).float()
        if self.old_model is not None:
            with torch.no_grad():
                old = torch.sigmoid(self.old_model(inputs))
            target = torch.where(self.old_mask, old, target)
        if self.scenario == "task_il":
            cols = self.class_mask[batch.task]
            return {"bce": F.binary_cross_entropy_with_logits(logits[cols], target[cols])}
        seen = self.seen_mask
        return {"bce": F.binary_cross_entropy_with_logits(logits[:, seen], target[:, seen])}

    def after_task(self, task):
        self.model.eval()
        with torch.no_grad():
            feats = self.model.features(self.preprocess(task.train_x))
            self.memory.select(super().train_data(task), feats)
            self.update_prototypes()
        self.model.train()
        self.old_model = self.frozen_copy(self.model).eval()

    def update_prototypes(self) -> None:
        held = self.memory.stored()
        feats = F.normalize(self.model.features(self.preprocess(held.x)), dim=1)
        y = held.y.to(feats.device)
        n_classes = len(self.seen_mask)
        sums = torch.zeros(n_classes, feats.shape[1], device=feats.device)
        sums.index_add_(0, y, feats)
        counts = torch.bincount(y, minlength=n_classes).unsqueeze(1)
        self.prototypes = F.normalize(sums / counts, dim=1)  # NaN rows: classes never seen

    def predict_logits(self, x, task_ids=None):
        if self.prototypes is None:
            return self.model(x)
        feats = F.normalize(self.model.features(x).float(), dim=1)  # float under autocast too
        dist = torch.cdist(feats, self.prototypes)
        return (-dist).nan_to_num(nan=float("-inf"))

    def state_dict(self):
        return {**super().state_dict(), "prototypes": self.prototypes,
                "old_model": None if self.old_model is None else self.old_model.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.prototypes = state["prototypes"]
        if state["old_model"] is not None:
            self.old_model = self.frozen_copy(self.model).eval()
            self.old_model.load_state_dict(state["old_model"])
