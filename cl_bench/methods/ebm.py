"""Energy-based classifier (Li, Du, van de Ven & Mordatch, "Energy-Based Models for
Continual Learning", CoLLAs 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.errors import ConfigError
from cl_bench.methods.base import Method, MethodConf
from cl_bench.models.ebm import EBMMLP, EBMGated
from cl_bench.schemas import defaults_from, schema

NEGATIVES = ("task", "batch")
REPLAY_WEIGHTS = ("task", "mean")


@schema("method", "ebm")
@dataclass
class EBMConf(MethodConf):
    negatives: str = "task"  # task: the current task's classes | batch: the batch's labels
    replay_batch_size: int = 0  # samples replayed from memory per step (0: no replay)
    replay_weight: str = "task"  # task: current 1/t, replayed 1 - 1/t | mean: one mean


@defaults_from(EBMConf)
class EBM(Method):
    """The energy-based classifier of Li et al. (CoLLAs 2022) on a label-conditioned
    energy network (`model=ebm_mlp`, or `model=ebm_gated` on CIFAR-100 features;
    `model(x, labels)` -> energies).

    Each sample's positive label y is paired with one negative y- drawn uniformly from the
    current classes other than y: with `negatives=task` (boundary-aware) the current
    task's classes, with `negatives=batch` (boundary-agnostic, runs in `stream=task_free`)
    the labels present in the batch. The loss is the negative log-likelihood over the pair,
    L = E(x, y) + log(exp(-E(x, y)) + exp(-E(x, y-))), averaged over the batch. Classes
    absent from the candidates get no gradient through their label embedding, which is
    what spares the old classes. A sample with no other candidate class is paired with
    its own label: its loss is then the constant log 2, with zero gradient.

    With `replay_batch_size` > 0, that many memory samples join the batch and the current
    classes become every class seen (`negatives=task`; the reference's split-MNIST replay)
    or the joined batch's labels (`negatives=batch`). `replay_weight=task` weighs the
    current batch's mean loss 1/t and the replayed one 1 - 1/t, t the number of tasks begun
    (the reference's CIFAR-100 path; needs boundaries), `mean` takes one mean over both
    (its split-MNIST path). `predict_logits` gives -E(x, y) for every class (argmin energy),
    unseen classes at -inf.
    """

    provides = frozenset()  # energies of label pairs: no class logits, no cross-entropy

    supported_streams = ("task", "online", "task_free", "blurry")

    def __init__(self, negatives: str, replay_batch_size: int,
                 replay_weight: str, **kw):
        if not isinstance(kw["model"], EBMMLP | EBMGated):
            raise ConfigError("method=ebm needs an energy network: model=ebm_mlp or "
                              "model=ebm_gated, got "
                              f"{type(kw['model']).__name__}")
        if negatives not in NEGATIVES:
            raise ValueError(f"method.negatives={negatives!r}: choose one of {NEGATIVES}")
        if replay_weight not in REPLAY_WEIGHTS:
            raise ValueError(f"method.replay_weight={replay_weight!r}: choose one of "
                             f"{REPLAY_WEIGHTS}")
        if replay_batch_size < 0:
            raise ValueError(f"method.replay_batch_size must be >= 0, got {replay_batch_size}")
        if replay_batch_size:
            self.memory_needs = frozenset({"add", "sample"})
            self.memory_hint = "choose e.g. memory=class_balanced memory.size=1000"
        super().__init__(**kw)
        self.negatives = negatives
        self.replay_batch_size = replay_batch_size
        self.replay_weight = replay_weight
        self.current = torch.zeros_like(self.seen_mask)  # classes negatives come from (task)
        self.tasks_begun = 0

    def check_stream(self, modes, stream):
        super().check_stream(modes, stream)
        if "task_free" not in modes:
            return
        if self.negatives == "task":
            raise ConfigError(f"method=ebm with method.negatives=task needs task boundaries; "
                              f"stream={stream} hides them: use method.negatives=batch")
        if self.replay_batch_size and self.replay_weight == "task":
            raise ConfigError(f"method=ebm with method.replay_weight=task counts tasks; "
                              f"stream={stream} hides them: use method.replay_weight=mean")

    def before_task(self, task):
        self.tasks_begun += 1
        current = self.seen_mask if self.replay_batch_size else self.class_mask[task.id]
        self.current = current.clone()

    def resume_task(self, task):
        self.tasks_begun += 1

    def candidates(self, y: torch.Tensor) -> torch.Tensor:
        """Bool mask over the classes the negatives of batch labels `y` come from."""
        if self.negatives == "task":
            return self.current
        present = torch.zeros_like(self.seen_mask)
        present[y] = True
        return present

    def sample_negatives(self, y: torch.Tensor) -> torch.Tensor:
        """One negative label per sample, uniform over the candidates other than its label
        (its own label where there is no other)."""
        weight = self.candidates(y).float().expand(len(y), -1).clone()
        rows = torch.arange(len(y), device=y.device)
        weight[rows, y] = 0.0
        weight[rows, y] = (weight.sum(1) == 0).float()
        return torch.multinomial(weight, 1).squeeze(1)

    def pair_nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of uint8 batch `x` with labels `y` against sampled negatives."""
        pairs = torch.stack([y, self.sample_negatives(y)], dim=1)
        energy = self.model(self.preprocess(x, train=True), pairs)  # [B, 2]: pos, neg
        return energy[:, 0] + torch.logsumexp(-energy, dim=1)

    def loss(self, batch):
        if not (self.replay_batch_size and len(self.memory)):
            return {"ebm": self.pair_nll(batch.x, batch.y).mean()}
        replayed = self.replay(self.replay_batch_size)
        joined = batch.cat(replayed)
        nll = self.pair_nll(joined.x, joined.y)
        self.report_losses(replayed, nll[len(batch):])
        if self.replay_weight == "mean":
            return {"ebm": nll.mean()}
        t = max(self.tasks_begun, 1)
        return {"ebm": nll[:len(batch)].mean() / t,
                "replay": (1 - 1 / t) * nll[len(batch):].mean()}

    def after_step(self, batch):
        if self.replay_batch_size:
            self.memory.add(batch)

    def predict_logits(self, x, task_ids=None):
        """Energies of the seen classes only (their cost grows with the labels scored)."""
        seen = self.seen_mask.nonzero().squeeze(1)
        out = torch.full((len(x), len(self.seen_mask)), float("-inf"), device=x.device)
        out[:, seen] = -self.model(x, seen).to(out.dtype)
        return out
