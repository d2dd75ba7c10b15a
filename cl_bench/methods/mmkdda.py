"""MMKDDA: online replay with multi-scale feature distillation, mixing of memory and current
samples, and a meta (Reptile-style) update scheduled by the number of tasks seen."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from cl_bench.errors import ConfigError
from cl_bench.methods.er import ER, ReplayConf
from cl_bench.models.levels import capture, default_level_names, level_modules
from cl_bench.schemas import defaults_from, schema

MIXES = ("none", "mixup", "cutmix")
PARTNERS = ("shuffle", "cross")
SCHEDULES = ("exp", "inverse", "constant")
DISTANCES = ("l2", "squared")


@schema("method", "mmkdda")
@dataclass
class MMKDDAConf(ReplayConf):
    distill_weight: float = 0.1  # lambda of the paper's eq. (5)
    levels: list[str] | None = None  # module names of the feature levels; null: the model's
    scales: list[int] | None = field(default_factory=lambda: [1, 2])  # regions per side of
    # each pooling scale (the paper: scales 1 and 1/2); null: [1, 2]
    distance: str = "l2"  # l2 (the paper's norm) | squared
    mix: str = "cutmix"  # none | mixup | cutmix
    mix_alpha: float = 1.0  # lambda ~ Beta(alpha, alpha)
    mix_fraction: float = 1.0  # mixed copies appended, as a fraction of the joined batch
    mix_partner: str = "shuffle"  # shuffle (the paper) | cross (current <-> memory)
    inner_steps: int = 2  # k of the paper's eq. (3)
    outer_schedule: str = "exp"  # exp: lr e^(-decay t/T) | inverse: lr / t | constant: lr
    outer_decay: float = 2.0  # zeta of eq. (4)
    outer_lr: float = 1.0


def pooled_embedding(h: torch.Tensor, scales: list[int]) -> torch.Tensor:
    """The multi-scale pooled embedding of feature maps `h` (B, C, H, W), flattened per
    sample: for each scale s, each of the s x s regions h[:, :, iH/s:(i+1)H/s, jW/s:(j+1)W/s]
    (floor bounds, the paper's eq. 9) gives its height-pooled slices (mean over the
    region's width, C x H/s) and width-pooled slices (mean over its height, C x W/s), all
    concatenated (eqs. 6, 8, 10). A flat level (B, D) has no spatial axes: its embedding
    is itself, whatever the scales."""
    if h.dim() == 2:
        return h
    n, _, height, width = h.shape
    parts = []
    for s in scales:
        rows = [(i * height // s, (i + 1) * height // s) for i in range(s)]
        cols = [(j * width // s, (j + 1) * width // s) for j in range(s)]
        for r0, r1 in rows:
            for c0, c1 in cols:
                region = h[:, :, r0:r1, c0:c1]
                parts += [region.mean(3).reshape(n, -1), region.mean(2).reshape(n, -1)]
    return torch.cat(parts, dim=1)


def multiscale_distillation(student: list[torch.Tensor], teacher: list[torch.Tensor],
                            scales: list[int], distance: str = "l2") -> torch.Tensor:
    """(1/L) sum over the L levels of the batch mean of ||Phi(h_new) - Phi(h_old)||_2
    (`distance=l2`, the paper's eqs. 7, 11) or of its square (`squared`), Phi the
    `pooled_embedding`. Pooling is linear, so Phi is taken once, of the difference."""
    losses = []
    for new, old in zip(student, teacher, strict=True):
        diff = pooled_embedding(new - old, scales)
        sq = diff.pow(2).sum(1)
        losses.append((sq if distance == "squared" else torch.linalg.vector_norm(diff, dim=1))
                      .mean())
    return torch.stack(losses).mean()


def cutmix_box(lam: float, height: int, width: int, rng: random.Random) -> tuple[int, ...]:
    """CutMix's box (Yun et al., 2019; the paper's eq. 2 and Algorithm 2): centre uniform
    in the image, sides sqrt(1 - lam) of the image's, clipped to it: (r0, r1, c0, c1)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    r0, r1 = int(min(max(cy - ch / 2, 0), height)), int(min(max(cy + ch / 2, 0), height))
    c0, c1 = int(min(max(cx - cw / 2, 0), width)), int(min(max(cx + cw / 2, 0), width))
    return r0, r1, c0, c1


def mix(x: torch.Tensor, partner: torch.Tensor, lam: float, kind: str,
        rng: random.Random) -> tuple[torch.Tensor, float]:
    """(mixed inputs, the exact weight of `x`'s labels): `mixup` lam x + (1 - lam) partner;
    `cutmix` one box for the batch (`cutmix_box`) pasted from `partner` into `x`, the
    weight 1 - box area / image area (the box is clipped, so not exactly lam)."""
    if kind == "mixup":
        return x.mul(lam).add_(partner, alpha=1.0 - lam), lam
    if x.dim() != 4:
        raise ConfigError("method.mix=cutmix pastes image patches, but the inputs are "
                          f"{tuple(x.shape[1:])}: use method.mix=mixup")
    height, width = x.shape[2:]
    r0, r1, c0, c1 = cutmix_box(lam, height, width, rng)
    mixed = x.clone()
    mixed[:, :, r0:r1, c0:c1] = partner[:, :, r0:r1, c0:c1]
    return mixed, 1.0 - (r1 - r0) * (c1 - c0) / (height * width)


@defaults_from(MMKDDAConf)
class MMKDDA(ER):
    """MMKDDA (Han & Liu, "Online Continual Learning via the Meta-learning Update with
    Multi-scale Knowledge Distillation and Data Augmentation", EAAI 2022, arXiv 2209.06107;
    no public code). ER (replay of `replay_batch_size` memory samples joined to the current
    batch) with three additions, each switchable by config:

    * **Mixing** (`mix`): `mix_fraction` x n samples of the joined batch of n (drawn
      without replacement) each get a partner -- `shuffle`: any sample of the joined batch
      (the paper shuffles it), `cross`: a current sample gets a memory one and vice versa
      (shuffle while the memory is empty) -- and their CutMix (the paper) or mixup, with
      lambda ~ Beta(`mix_alpha`, `mix_alpha`) (the paper: 1, uniform) for the whole batch,
      is appended to the joined batch (the paper's "input = B u aug"), its loss weighing
      the two labels by lambda (CutMix: the exact pasted area). The cross-entropy is the
      mean over all samples. Mixing happens on the preprocessed (normalised, augmented)
      inputs.
    * **Multi-scale distillation** (`distill_weight` = the paper's lambda, 0.1): after
      each task a frozen copy of the model becomes the teacher; on every step the teacher
      sees the same inputs (originals and mixed; `flops_teacher`), and
      `multiscale_distillation` of the feature levels (`levels`: module names; by default
      the conv blocks of `model=convnet`, the stages of the ResNets, and for `model=mlp` the
      hidden layers' activations, where pooling is the identity and the scales play no
      part) at the pooling scales `scales` (regions per side; the paper uses scales 1 and
      1/2, i.e. [1, 2]) is added. The paper's eq. (7) reads as the L2 norm of the embedding
      difference (`distance=l2`); its sub/superscript is ambiguous, `squared` takes the
      square. The embeddings are not normalised (the paper's eq. 6 does not).
    * **Meta update** (MER's/Reptile's interpolation): from the parameters theta_0 at the
      step's start, `inner_steps` (k; 2 in the paper's eq. 3, 1 in its Algorithm 3)
      optimiser steps on the same inputs give theta_k, then theta = theta_0 + gamma
      (theta_k - theta_0) with gamma by `outer_schedule`: `exp` outer_lr e^(-outer_decay
      t / T) (the paper's eq. 4, decay 2 for CIFAR-10/100), `inverse` outer_lr / t,
      `constant` outer_lr; t = the tasks begun so far (1 on the first, our reading of the
      paper's "current task"; 0-based t is `exp` with outer_lr e^(decay/T)), T = the
      benchmark's tasks. The optimiser's state (momentum) is not interpolated. Inner steps
      after the first reuse the first's inputs, replayed samples and teacher features; their
      FLOPs and the interpolation (3 per parameter) are `flops_meta`. Memory updates once
      per step. With gamma = 1 no interpolation runs, so `distill_weight=0 mix=none
      inner_steps=1 outer_schedule=constant outer_lr=1` is ER bit for bit.

    Needs task boundaries (the teacher, t): runs in `stream=task|online|blurry`. The paper
    evaluates task-IL with a ring buffer (`memory=ring`), reduced ResNet-18, batch 10.
    """

    supported_streams = ("task", "online", "blurry")
    stability_knobs = ("distill_weight",)
    inner_flops = "meta"

    def __init__(self, distill_weight: float, levels: list[str] | None,
                 scales: list[int] | None, distance: str, mix: str,
                 mix_alpha: float, mix_fraction: float,
                 mix_partner: str, inner_steps: int,
                 outer_schedule: str, outer_decay: float,
                 outer_lr: float, **kw):
        scales = [1, 2] if scales is None else list(scales)
        for key, value, allowed in (("distance", distance, DISTANCES), ("mix", mix, MIXES),
                                    ("mix_partner", mix_partner, PARTNERS),
                                    ("outer_schedule", outer_schedule, SCHEDULES)):
            if value not in allowed:
                raise ConfigError(f"method.{key}={value!r}: choose one of {allowed}")
        for key, value, ok, need in (
                ("distill_weight", distill_weight, distill_weight >= 0, ">= 0"),
                ("scales", scales, bool(scales) and all(s >= 1 for s in scales),
                 "a list of ints >= 1"),
                ("mix_alpha", mix_alpha, mix_alpha > 0, "> 0"),
                ("mix_fraction", mix_fraction, 0 < mix_fraction <= 1, "in (0, 1]"),
                ("inner_steps", inner_steps, inner_steps >= 1, ">= 1"),
                ("outer_decay", outer_decay, outer_decay >= 0, ">= 0"),
                ("outer_lr", outer_lr, outer_lr > 0, "> 0")):
            if not ok:
                raise ConfigError(f"method.{key} must be {need}, got {value!r}")
        names = list(levels) if levels is not None else default_level_names(kw["model"])
        if distill_weight > 0:
            if names is None:
                raise ConfigError(f"method.levels: model {type(kw['model']).__name__} has no "
                                  "default feature levels; list its modules' names")
            try:
                level_modules(kw["model"], names)
            except KeyError as missing:
                raise ConfigError(f"method.levels: the model has no module {missing}") from None
        super().__init__(**kw)
        self.distill_weight, self.level_names = distill_weight, names
        self.scales, self.distance = scales, distance
        self.mix, self.mix_alpha, self.mix_fraction = mix, mix_alpha, mix_fraction
        self.mix_partner, self.inner_steps = mix_partner, inner_steps
        self.steps_per_batch = inner_steps
        self.outer_schedule, self.outer_decay, self.outer_lr = (outer_schedule, outer_decay,
                                                                outer_lr)
        self.n_tasks = self.class_mask.shape[0]
        self.tasks_seen = 0
        self.teacher: torch.nn.Module | None = None
        self._levels = self._teacher_levels = None
        self.rng = random.Random(torch.initial_seed())  # lambda and boxes: no device sync
        self._step = None  # what the inner steps after the first reuse
        self._start = None  # (parameters, their values) at the batch's start

    # -- the meta update -------------------------------------------------------------------
    def outer_step(self) -> float:
        """gamma of the interpolation for the current number of tasks seen."""
        t = max(self.tasks_seen, 1)
        if self.outer_schedule == "exp":
            return self.outer_lr * math.exp(-self.outer_decay * t / self.n_tasks)
        if self.outer_schedule == "inverse":
            return self.outer_lr / t
        return self.outer_lr

    def before_batch(self, batch):
        self._gamma = self.outer_step()
        params = list(self.trainable_parameters())
        self._start = None if self._gamma == 1 else (params, [p.detach().clone()
                                                               for p in params])

    def after_batch(self, batch):
        self._step = None
        if self._start is not None:
            params, start = self._start
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    p.lerp_(p0, 1.0 - self._gamma)  # gamma p + (1 - gamma) p0
            self.counter.add(3 * sum(p.numel() for p in params), "meta")
        self._start = None

    # -- the loss --------------------------------------------------------------------------
    def _forward(self, model_call, distil: bool):
        """(logits, feature levels or None) of `model_call()`."""
        if not distil:
            return model_call(), None
        with capture(self._levels) as feats:
            logits = model_call()
        return logits, list(feats)

    def _partners(self, n: int, n_current: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed samples, their partners): positions in the joined batch of n."""
        m = max(1, round(self.mix_fraction * n))
        chosen = torch.randperm(n, device=device)[:m]
        if self.mix_partner == "shuffle" or n == n_current:
            return chosen, torch.randperm(n, device=device)[:m]
        n_memory = n - n_current
        memory = n_current + torch.randint(0, n_memory, (m,), device=device)
        current = torch.randint(0, n_current, (m,), device=device)
        return chosen, torch.where(chosen < n_current, memory, current)

    def _first_pass(self, batch, distil: bool) -> dict:
        """The inner loop's first step: replay, the model's pass over the joined batch (the
        step's first `forward`), mixing, the teacher."""
        replayed = self.replay(self.replay_batch_size) if len(self.memory) else None
        joined = batch.cat(replayed) if replayed is not None else batch
        logits, feats = self._forward(lambda: self.forward(joined.x), distil)
        if replayed is not None:
            self.report_ce(replayed, logits[len(batch):])
        step = {"joined": joined, "logits": logits, "feats": feats}
        inputs, _ = self.forward_of(joined.x)
        step["inputs"] = inputs
        if self.mix != "none":
            a, b = self._partners(len(joined), len(batch), inputs.device)
            lam = self.rng.betavariate(self.mix_alpha, self.mix_alpha)
            mixed, weight = mix(inputs[a], inputs[b], lam, self.mix, self.rng)
            step.update(a=a, b=b, weight=weight, mixed=mixed)
            step["mixed_logits"], step["mixed_feats"] = self._forward(
                lambda: self.model(mixed), distil)
        if distil:
            seen = torch.cat([inputs, step["mixed"]]) if "mixed" in step else inputs
            with torch.no_grad(), self.flops("teacher"), capture(self._teacher_levels) as t:
                self.teacher(seen)
            step["teacher"] = [f.detach() for f in t]
        return step

    def _again(self, step: dict, distil: bool) -> dict:
        """A later inner step: the model's passes over the first step's inputs."""
        again = dict(step)
        again["logits"], again["feats"] = self._forward(lambda: self.model(step["inputs"]),
                                                        distil)
        self.ctx.record_logits(again["logits"])  # the joined batch starts with the current one
        if "mixed" in step:
            again["mixed_logits"], again["mixed_feats"] = self._forward(
                lambda: self.model(step["mixed"]), distil)
        return again

    def loss(self, batch):
        distil = self.teacher is not None and self.distill_weight > 0
        if distil and self._levels is None:
            self._levels = level_modules(self.model, self.level_names)
        if self._step is None:
            step = self._step = self._first_pass(batch, distil)
        else:
            step = self._again(self._step, distil)
        joined = step["joined"]
        ce = self.cross_entropy(step["logits"], joined.y, joined.task)
        feats = step["feats"]
        if "mixed" in step:
            a, b, w, out = step["a"], step["b"], step["weight"], step["mixed_logits"]
            mixed_ce = (w * self.cross_entropy(out, joined.y[a], joined.task[a])
                        + (1 - w) * self.cross_entropy(out, joined.y[b], joined.task[b]))
            n, m = len(joined), len(a)
            ce = (n * ce + m * mixed_ce) / (n + m)
            if distil:
                feats = [torch.cat(pair) for pair in zip(feats, step["mixed_feats"],
                                                         strict=True)]
        terms = {"ce": ce}
        if distil:
            terms["distill"] = self.distill_weight * multiscale_distillation(
                feats, step["teacher"], self.scales, self.distance)
        return terms

    # -- boundaries ------------------------------------------------------------------------
    def after_step(self, batch):
        if self.ctx.inner == self.inner_steps - 1:
            self.memory.add(batch)

    def before_task(self, task):
        self.tasks_seen += 1

    def resume_task(self, task):
        self.tasks_seen += 1

    def after_task(self, task):
        if self.distill_weight > 0:
            self._snapshot()

    def _snapshot(self) -> None:
        self.teacher = self.frozen_copy(self.model).eval()
        self._teacher_levels = level_modules(self.teacher, self.level_names)

    def state_dict(self):
        return {**super().state_dict(), "rng": self.rng.getstate(),
                "teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rng.setstate(state["rng"])
        self.teacher = None
        if state["teacher"] is not None:
            self._snapshot()
            self.teacher.load_state_dict(state["teacher"])

