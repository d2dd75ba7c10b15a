"""Current-task logit masking (SparCL's `--use_cl_mask`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import schema


class TaskLogitMask(Plugin):
    """The cross-entropy of the current task's samples over the current task's classes
    only (the other classes' logits at -inf); replayed samples of earlier tasks keep the
    full softmax. Part of SparCL's reference code path (Wang et al., NeurIPS 2022,
    `neu-spiral/SparCL`), a strong class-IL trick of its own (the spirit of ER-ACE's
    separated softmax), so it is a separate plugin to ablate (`papers/methods_sparse.md`
    section 12)."""

    needs = frozenset({"cross_entropy"})

    supported_scenarios = ("class_il",)

    def __init__(self):
        self.current = -1

    def before_task(self, task):
        self.current = task.id

    def classification_loss(self, logits, y, task_ids):
        own = self.method.class_mask[task_ids] | (task_ids != self.current).unsqueeze(1)
        return F.cross_entropy(logits.masked_fill(~own, float("-inf")), y)

    def resume_task(self, task):
        self.current = task.id


@schema("plugin", "task_logit_mask")
@dataclass
class TaskLogitMaskConf(PluginConf):
    _target_: str = "cl_bench.plugins.task_logit_mask.TaskLogitMask"
