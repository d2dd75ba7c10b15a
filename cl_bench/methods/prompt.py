"""Prompt methods on a frozen pretrained ViT: L2P, DualPrompt and CODA-Prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cl_bench.methods.base import Method, MethodConf
from cl_bench.models.prompts import CodaPrompts, DualPrompts, L2PPrompts, Prompted
from cl_bench.schemas import defaults_from, schema


class PromptMethod(Method):
    """The shared kernel of the prompt methods: the model becomes the frozen ViT with the
    method's prompts (`make_prompts`); a step is cross-entropy over the current task's
    classes (the reference codes' train mask) plus `pull` x the key-query distance;
    predictions score only the classes seen so far. The evaluator's true task ids score the
    prompt choice: `prompt_use_per_task` (how often each prompt, or E-prompt, was chosen for
    each task's test images) and, where a prompt belongs to a task, `task_select_acc`;
    both over the evaluations since the last training step (the final test)."""

    supported_scenarios = ("class_il", "task_il")
    supported_streams = ("task",)

    def __init__(self, pull: float, **kw):
        super().__init__(**kw)
        self.pull = pull
        self._use: torch.Tensor | None = None  # (tasks, prompts) counts of the choices
        self._trained_since = True

    def make_prompts(self, vit) -> Prompted:
        raise NotImplementedError

    def wrap_model(self, model):
        return self.make_prompts(model)

    def task_of(self, batch) -> torch.Tensor | None:
        """The prompt ids training uses (None: chosen by key, as at test)."""
        return None

    def loss(self, batch):
        inputs = self.preprocess(batch.x, train=True)
        logits, pull = self.model.run(inputs, self.task_of(batch))
        self.ctx.record_logits(logits)
        terms = {"ce": self.cross_entropy(logits, batch.y, batch.task)}
        if self.pull:
            terms["pull"] = self.pull * pull
        return terms

    def loss_logits(self, logits, task_ids):
        return logits.masked_fill(~self.class_mask[task_ids], float("-inf"))

    def before_task(self, task):
        self.reset_optimizer()  # the references' reinit_optimizer: no momentum carried over

    def after_step(self, batch):
        self._trained_since = True

    def predict_logits(self, x, task_ids=None):
        logits, _ = self.model.run(x)
        return logits.masked_fill(~self.seen_mask, float("-inf"))

    def see_task_ids(self, task_ids: torch.Tensor) -> None:
        chosen = self.model.chosen
        if chosen is None or len(chosen) != len(task_ids):
            return
        n_prompts = len(self.model.keys)
        if self._trained_since or self._use is None:
            self._use = torch.zeros(self.class_mask.shape[0], n_prompts, device=task_ids.device)
            self._trained_since = False
        rows = task_ids[:, None].expand_as(chosen) if chosen.dim() == 2 else task_ids
        self._use.view(-1).index_add_(0, (rows * n_prompts + chosen).flatten(),
                                      torch.ones(chosen.numel(), device=task_ids.device))
        self.model.chosen = None

    def summary(self) -> dict:
        out = super().summary()
        if self._use is not None:
            out["prompt_use_per_task"] = self._use.long().tolist()
        return out


@schema("method", "l2p")
@dataclass
class L2PConf(MethodConf):
    pool: int = 10
    length: int = 5
    top_n: int = 4
    batchwise: bool = False
    pull: float = 0.1


@defaults_from(L2PConf)
class L2P(PromptMethod):
    """Learning to Prompt (Wang et al., CVPR 2022): a shared prompt pool chosen by key-query
    match (see `L2PPrompts`); no buffer, no task id at test."""

    def __init__(self, pool: int, length: int, top_n: int,
                 batchwise: bool, **kw):
        self.shape = dict(pool=pool, length=length, top_n=top_n, batchwise=batchwise)
        super().__init__(**kw)

    def make_prompts(self, vit):
        return L2PPrompts(vit, **self.shape)


@schema("method", "dualprompt")
@dataclass
class DualPromptConf(MethodConf):
    g_layers: list[int] = field(default_factory=lambda: [0, 1])
    g_length: int = 5
    e_layers: list[int] = field(default_factory=lambda: [2, 3])
    e_length: int = 5
    pull: float = 1.0


@defaults_from(DualPromptConf)
class DualPrompt(PromptMethod):
    """DualPrompt (Wang et al., ECCV 2022): G-prompt and per-task E-prompts by prefix
    tuning (see `DualPrompts`); trains with the sample's task's E-prompt, chooses it by key
    at test, and reports how often that choice is the true task (`task_select_acc`)."""

    def __init__(self, g_layers, g_length: int, e_layers,
                 e_length: int, **kw):
        self.shape = dict(g_layers=g_layers, g_length=g_length, e_layers=e_layers,
                          e_length=e_length)
        super().__init__(**kw)

    def make_prompts(self, vit):
        return DualPrompts(vit, n_tasks=self.class_mask.shape[0], **self.shape)

    def task_of(self, batch):
        return batch.task

    def before_task(self, task):
        super().before_task(task)
        self.model.learned = task.id + 1

    def resume_task(self, task):
        self.model.learned = task.id + 1

    def summary(self) -> dict:
        out = super().summary()
        if self._use is not None:
            use = self._use[: self.model.learned, : self.model.learned]
            out["task_select_acc"] = float(use.diagonal().sum() / use.sum().clamp(min=1))
            out["task_select_acc_per_task"] = (use.diagonal() / use.sum(1).clamp(min=1)).tolist()
        return out


@schema("method", "coda_prompt")
@dataclass
class CodaPromptConf(MethodConf):
    pool: int = 100
    length: int = 8
    layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    pull: float = 0.0


@defaults_from(CodaPromptConf)
class CodaPrompt(PromptMethod):
    """CODA-Prompt (Smith et al., CVPR 2023): an attention-weighted sum of prompt
    components, end to end with no key-query pull (see `CodaPrompts`). The reference's
    orthogonality penalty is 0 in its CIFAR config; only the orthogonal initialisation of
    each task's components is kept."""

    def __init__(self, pool: int, length: int, layers, **kw):
        self.shape = dict(pool=pool, length=length, layers=layers)
        super().__init__(**kw)

    def make_prompts(self, vit):
        return CodaPrompts(vit, n_tasks=self.class_mask.shape[0], **self.shape)

    def before_task(self, task):
        if task.id:
            self.model.start_task(task.id)
        super().before_task(task)

    def resume_task(self, task):
        self.model.task = task.id
