"""Stability-gap remedies as plugins of any method.

The four parts of SGM (Harun & Kanan, "Overcoming the Stability Gap in Continual Learning",
TMLR 2024) and the nearest-class-mean head of Lapacz et al. ("Exploring the Stability Gap in
Continual Learning: The Role of the Classification Head", WACV 2025). The paper leaves the
exact formulas open; the choices made here are:

* `class_mean_init`: before a task, each new class's output row is its mean penultimate
  feature over the task's training set, scaled to the mean norm of the rows already trained
  (the initial rows for the first task); its bias is the mean bias of those rows.
* `freeze_old_rows`: output rows (weight and bias) of classes of earlier tasks are
  restored after every optimiser step, so neither gradients nor momentum move them.
* `soft_targets`: the target is (1 - w) one-hot + w softmax(model's own detached
  logits over the classes seen so far), w = `weight`.
* `lora`: every hidden `nn.Linear` (not the head) is frozen and gets a trainable
  low-rank update (alpha / r) B A, merged into the frozen weight at the end of each task.
* `NMCHead` (`plugin=[nmc]`, alias `model.head=nmc`): predictions are the cosine
  similarity of the L2-normalised feature to the normalised mean feature of each class,
  over the memory plus a fixed sample of the current task (classes with no sample get
  -inf); training still uses the linear head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.schemas import defaults_from, schema


def check_head(plugin: str, model: nn.Module) -> None:
    """A model with an `nn.Linear` output layer `head` (one row per class) and `features`
    (its input), as the class-mean plugins read and write them."""
    if not isinstance(getattr(model, "head", None), nn.Linear) or \
            not callable(getattr(model, "features", None)):
        raise ValueError(f"plugin {plugin} needs a model with an nn.Linear output layer "
                         f"`head` over `features` (e.g. model=mlp), not {type(model).__name__}")


class ClassMeanInit(Plugin):
    """SGM's initialisation of new output rows from class-mean features (Harun & Kanan,
    TMLR 2024)."""

    needs = frozenset({"class_logits"})

    def check_model(self, model):
        check_head("class_mean_init", model)

    @torch.no_grad()
    def before_task(self, task):
        method = self.method
        new = [c for c in task.classes if not method.old_mask[c]]
        if not new:
            return
        model, head = method.model, method.model.head
        was_training = model.training
        model.eval()
        x = task.train_x
        feats = torch.cat([model.features(method.preprocess(x[b : b + 1000]))
                           for b in range(0, len(x), 1000)])
        model.train(was_training)
        y = task.train_y
        old = method.old_mask.nonzero().flatten().tolist()
        ref = old or list(range(head.out_features))
        norm = head.weight[ref].norm(dim=1).mean()
        centre = feats.mean(0)
        for c in new:
            mean = feats[y == c].mean(0) - centre
            head.weight[c] = norm * mean / mean.norm().clamp(min=1e-12)
        if head.bias is not None:
            head.bias[new] = head.bias[ref].mean()


class FreezeOldRows(Plugin):
    """SGM's frozen output rows of earlier tasks' classes (Harun & Kanan, TMLR 2024)."""

    needs = frozenset({"class_logits"})
    # needs tasks with their own classes: in domain-IL every task shares the output rows
    supported_scenarios = ("class_il", "task_il")

    def __init__(self):
        self.frozen: dict = {}

    def check_model(self, model):
        check_head("freeze_old_rows", model)

    def before_task(self, task):
        method = self.method
        old = (method.old_mask & ~method.class_mask[task.id]).nonzero().flatten().tolist()
        head = method.model.head
        self.frozen.clear()
        for param in (head.weight, head.bias):
            if param is not None and old:
                self.frozen[param] = (old, param.detach()[old].clone())

    @torch.no_grad()
    def after_step(self, batch):
        for param, (rows, saved) in self.frozen.items():
            param[rows] = saved


@schema("plugin", "soft_targets")
@dataclass
class SoftTargetsConf(PluginConf):
    _target_: str = "cl_bench.plugins.stability_gap.SoftTargets"
    weight: float = 0.2


@defaults_from(SoftTargetsConf)
class SoftTargets(Plugin):
    """SGM's dynamic soft targets (Harun & Kanan, TMLR 2024): (1 - w) one-hot + w times the
    model's own detached prediction over the classes seen so far."""

    needs = frozenset({"cross_entropy"})

    supported_streams = ("task", "online", "task_free", "blurry")

    def __init__(self, weight: float):
        self.weight = weight

    def classification_loss(self, logits, y, task_ids):
        seen = self.method.seen_mask
        own = F.softmax(logits.detach().masked_fill(~seen, float("-inf")), dim=1)
        target = (1 - self.weight) * F.one_hot(y, logits.shape[1]).to(own.dtype) \
            + self.weight * own
        logp = F.log_softmax(logits, dim=1)
        return -torch.where(target > 0, target * logp, 0).sum(1).mean()


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable rank-r update (Hu et al., 2022, LoRA)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.active = False  # the first task trains `base` itself; later ones the update
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        self.scale = alpha / rank
        self.reset()

    def reset(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        if not self.active:
            return self.base(x)
        return self.base(x) + self.scale * self.up(self.down(x))

    @torch.no_grad()
    def end_task(self) -> None:
        """After the first task: freeze `base`, train the update; later: merge it."""
        if self.active:
            self.base.weight += self.scale * self.up.weight @ self.down.weight
            self.reset()
        self.freeze_base()

    def freeze_base(self) -> None:
        self.active = True
        self.base.requires_grad_(False)


@schema("plugin", "lora")
@dataclass
class LoRAConf(PluginConf):
    _target_: str = "cl_bench.plugins.stability_gap.LoRA"
    rank: int = 8
    alpha: float | None = None  # update scale alpha / rank; null: alpha = rank


@defaults_from(LoRAConf)
class LoRA(Plugin):
    """SGM's low-rank adaptation of the hidden layers (Harun & Kanan, TMLR 2024, after
    Hu et al., 2022): every hidden `nn.Linear` (all but `model.head`) becomes a
    `LoRALinear`; the update is merged and reset after each task."""

    needs = frozenset({"plain_model", "class_logits"})
    nearest = "method=sgm, or this method without plugin lora"

    def __init__(self, rank: int, alpha: float | None):
        if rank < 1:
            raise ValueError(f"plugins.lora.rank={rank} must be >= 1 (drop plugin=lora "
                             "to train without LoRA)")
        self.rank, self.alpha = rank, float(rank if alpha is None else alpha)
        self.layers: list[LoRALinear] = []

    def wrap_model(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and child is not model.head:
                    lora = LoRALinear(child, self.rank, self.alpha).to(child.weight.device)
                    setattr(parent, name, lora)
                    self.layers.append(lora)
        if not self.layers:
            raise ValueError(f"plugins.lora.rank={self.rank}: the model has no hidden "
                             "nn.Linear layer; drop plugin=lora with this model")
        return model

    def after_task(self, task):
        for layer in self.layers:
            layer.end_task()
            for p in (layer.down.weight, layer.up.weight):
                self.method.optimizer.state.pop(p, None)

    def resume_task(self, task):
        for layer in self.layers:
            layer.freeze_base()


@schema("plugin", "nmc")
@dataclass
class NMCHeadConf(PluginConf):
    _target_: str = "cl_bench.plugins.stability_gap.NMCHead"
    bank_size: int | None = None  # current-task samples averaged; null: max(memory.size, 500)


@defaults_from(NMCHeadConf)
class NMCHead(Plugin):
    """Nearest-class-mean prediction (Lapacz et al., WACV 2025), `plugin=[nmc]` (alias
    `model.head=nmc`): class means over the memory plus `bank_size` samples of the current
    task (null: the memory's size, at least 500)."""

    needs = frozenset({"class_logits", "base_prediction"})
    nearest = "method=er plugin=[nmc]"

    def __init__(self, bank_size: int | None):
        if bank_size is not None and bank_size < 1:
            raise ValueError(f"plugins.nmc.bank_size={bank_size} must be >= 1 (or null)")
        self.bank_size = bank_size
        self.bank: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, method):
        super().setup(method)
        if self.bank_size is None:
            self.bank_size = max(method.memory.size, 500)

    def check_model(self, model):
        check_head("nmc", model)

    def before_task(self, task):
        pick = torch.randperm(len(task.train_y), device=task.train_y.device)[: self.bank_size]
        self.bank = (task.train_x[pick], task.train_y[pick])

    def predict(self, x, task_ids):
        method = self.method
        model = method.model
        if self.bank is None:  # before the first task: nothing to average yet
            return model(x)
        n_classes = model.head.out_features
        feats = F.normalize(model.features(x).float(), dim=1)  # float under bf16 autocast too
        parts_x, parts_y = [self.bank[0]], [self.bank[1]]
        if len(method.memory):
            held = method.memory.stored()
            parts_x.append(held.x)
            parts_y.append(held.y)
        bx, by = torch.cat(parts_x), torch.cat(parts_y)
        bank = F.normalize(model.features(method.preprocess(bx)).float(), dim=1)
        means = torch.zeros(n_classes, bank.shape[1], device=bank.device).index_add_(0, by, bank)
        counts = torch.bincount(by, minlength=n_classes)
        logits = feats @ F.normalize(means, dim=1).T
        return logits.masked_fill(counts == 0, float("-inf"))

    def state_dict(self):
        return {"bank": self.bank}

    def load_state_dict(self, state):
        self.bank = state["bank"]


@schema("plugin", "class_mean_init")
@dataclass
class ClassMeanInitConf(PluginConf):
    _target_: str = "cl_bench.plugins.stability_gap.ClassMeanInit"


@schema("plugin", "freeze_old_rows")
@dataclass
class FreezeOldRowsConf(PluginConf):
    _target_: str = "cl_bench.plugins.stability_gap.FreezeOldRows"

