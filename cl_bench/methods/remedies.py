"""Stability-gap remedies as switches of any method.

The four parts of SGM (Harun & Kanan, "Overcoming the Stability Gap in Continual Learning",
TMLR 2024) and the nearest-class-mean head of Lapacz et al. ("Exploring the Stability Gap in
Continual Learning: The Role of the Classification Head", WACV 2025). The paper leaves the
exact formulas open; the choices made here are:

* `head_init=class_mean`: before a task, each new class's output row is its mean penultimate
  feature over the task's training set, scaled to the mean norm of the rows already trained
  (the initial rows for the first task); its bias is the mean bias of those rows.
* `freeze_old_rows=true`: output rows (weight and bias) of classes of earlier tasks are
  restored after every optimiser step, so neither gradients nor momentum move them.
* `soft_targets=dynamic`: the target is (1 - w) one-hot + w softmax(model's own detached
  logits over the classes seen so far), w = `soft_weight`.
* `lora.rank=r`: every hidden `nn.Linear` (not the head) is frozen and gets a trainable
  low-rank update (alpha / r) B A, merged into the frozen weight at the end of each task.
* `model.head=nmc`: predictions are the cosine similarity of the L2-normalised feature to
  the normalised mean feature of each class, over the memory plus a fixed sample of the
  current task (classes with no sample get -inf); training still uses the linear head.

`install` attaches them to a method instance by wrapping its phases, so every method
(finetune, ER, ...) takes them without changes; with the defaults it does nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEAD_INITS = ("random", "class_mean")
SOFT_TARGETS = ("none", "dynamic")


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


def add_lora(model: nn.Module, rank: int, alpha: float) -> list[LoRALinear]:
    """Replace every hidden nn.Linear of `model` (all but `model.head`) by a LoRALinear."""
    wrapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not model.head:
                lora = LoRALinear(child, rank, alpha).to(child.weight.device)
                setattr(parent, name, lora)
                wrapped.append(lora)
    if not wrapped:
        raise ValueError(f"method.lora.rank={rank}: the model has no hidden nn.Linear layer; "
                         "use method.lora.rank=0 with this model")
    return wrapped


@torch.no_grad()
def class_mean_rows(method, task, new: list[int]) -> None:
    model, head = method.model, method.model.head
    was_training = model.training
    model.eval()
    x = task.train_x
    feats = torch.cat([model.features(method.preprocess(x[b : b + 1000]))
                       for b in range(0, len(x), 1000)])
    model.train(was_training)
    y = task.train_y
    old = sorted(method._seen - set(new))
    ref = old or list(range(head.out_features))
    norm = head.weight[ref].norm(dim=1).mean()
    centre = feats.mean(0)
    for c in new:
        mean = feats[y == c].mean(0) - centre
        head.weight[c] = norm * mean / mean.norm().clamp(min=1e-12)
    if head.bias is not None:
        head.bias[new] = head.bias[ref].mean()


def soft_cross_entropy(method, weight: float):
    def cross_entropy(logits, y, task_ids):
        if method.scenario == "task_il":
            logits = logits.masked_fill(~method.class_mask[task_ids], float("-inf"))
        own = F.softmax(logits.detach().masked_fill(~method._seen_mask, float("-inf")), dim=1)
        target = (1 - weight) * F.one_hot(y, logits.shape[1]).to(own.dtype) + weight * own
        logp = F.log_softmax(logits, dim=1)
        return -torch.where(target > 0, target * logp, 0).sum(1).mean()

    return cross_entropy


def nmc_predict(method, bank_size: int):
    model = method.model
    n_classes = model.head.out_features

    def predict(x):
        if method._bank is None:  # before the first task: nothing to average yet
            return model(x)
        feats = F.normalize(model.features(x).float(), dim=1)  # float under bf16 autocast too
        held = len(method.memory)
        parts_x, parts_y = [method._bank[0]], [method._bank[1]]
        if held:
            parts_x.append(method.memory.x[:held])
            parts_y.append(method.memory.y[:held])
        bx, by = torch.cat(parts_x), torch.cat(parts_y)
        bank = F.normalize(model.features(method.preprocess(bx)).float(), dim=1)
        means = torch.zeros(n_classes, bank.shape[1], device=bank.device).index_add_(0, by, bank)
        counts = torch.bincount(by, minlength=n_classes)
        logits = feats @ F.normalize(means, dim=1).T
        return logits.masked_fill(counts == 0, float("-inf"))

    before = method.before_task
    method._bank = None

    def before_task(task):
        pick = torch.randperm(len(task.train_y), device=task.train_y.device)[:bank_size]
        method._bank = (task.train_x[pick], task.train_y[pick])
        before(task)

    method.before_task = before_task
    return predict


def install(method, optimizer_factory, *, head_init: str = "random",
            freeze_old_rows: bool = False, soft_targets: str = "none",
            soft_weight: float = 0.2, lora=None, **_: object) -> None:
    """Attach the switches that are on to `method` (see the module docstring)."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"method.head_init={head_init!r}: choose one of {list(HEAD_INITS)}")
    if soft_targets not in SOFT_TARGETS:
        raise ValueError(f"method.soft_targets={soft_targets!r}: choose one of "
                         f"{list(SOFT_TARGETS)}")
    rank = int((lora or {}).get("rank", 0))
    head_kind = getattr(method.model, "head_kind", "linear")
    if (head_init, freeze_old_rows, soft_targets, rank, head_kind) == (
            "random", False, "none", 0, "linear"):
        return
    model = method.model
    method._seen = set()
    loras: list[LoRALinear] = []
    if rank:
        alpha = lora.get("alpha")
        loras = add_lora(model, rank, float(rank if alpha is None else alpha))
        method.optimizer = optimizer_factory(model.parameters())
    if soft_targets == "dynamic":
        method.cross_entropy = soft_cross_entropy(method, soft_weight)
    if head_kind == "nmc":
        method.predict = nmc_predict(method, max(method.memory.size, 500))
    frozen: dict = {}
    if freeze_old_rows:
        if method.scenario == "domain_il":
            raise ValueError("method.freeze_old_rows=true needs tasks with their own classes; "
                             "in domain-IL every task shares the output rows")

        @torch.no_grad()
        def restore(*_):
            for param, (rows, saved) in frozen.items():
                param[rows] = saved

        method.optimizer.register_step_post_hook(restore)

    before, after = method.before_task, method.after_task

    def before_task(task):
        new = [c for c in task.classes if c not in method._seen]
        if head_init == "class_mean" and new:
            class_mean_rows(method, task, new)
        if freeze_old_rows:
            old = sorted(method._seen - set(task.classes))
            head = model.head
            frozen.clear()
            for param in (head.weight, head.bias):
                if param is not None and old:
                    frozen[param] = (old, param.detach()[old].clone())
        method._seen |= set(task.classes)
        method._seen_mask = method.class_mask.new_zeros(method.class_mask.shape[1])
        method._seen_mask[sorted(method._seen)] = True
        before(task)

    def after_task(task):
        after(task)
        for layer in loras:
            layer.end_task()
            for p in (layer.down.weight, layer.up.weight):
                method.optimizer.state.pop(p, None)

    resume = method.resume_task

    def resume_task(task):  # a task a resumed run had completed: its weights are loaded
        resume(task)
        method._seen |= set(task.classes)
        for layer in loras:
            layer.freeze_base()

    method.before_task, method.after_task = before_task, after_task
    method.resume_task = resume_task
