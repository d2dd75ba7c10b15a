"""The shared machinery of generator-based replay: a level-aware conditional VAE trained
next to the classifier, and replay minibatches injected at chosen levels of the
classifier (DGR, Shin et al., 2017; internal replay / BI-R, van de Ven et al., 2020;
Progressive Latent Replay, Pawlak et al., 2022)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_bench.methods.base import Method, MethodConf
from cl_bench.models.cvae import LevelVAE
from cl_bench.models.levels import LevelView
from cl_bench.schemas import schema

TARGETS = ("from_a0", "from_injected_level")
PARTITIONS = ("batch_split", "temporal")
SPLITS = ("ceil", "largest_remainder")


@schema("method", "latent_replay")
@dataclass
class LatentReplayConf(MethodConf):
    """generative_replay / internal_replay / plr."""
    replay_batch_size: int = 128
    z_dim: int = 100
    generator_lr: float = 0.001
    per_class_prior: bool = True  # conditional replay: one prior mode per class
    gate_prop: float = 0.0
    recon_loss: str = "auto"  # auto | bce | mse (auto: bce when level 0 is raw pixels)
    kl_divisor: float | None = None  # null: the width of level 0
    distill: bool = True  # soft targets from the previous classifier (KD, T = temperature)
    temperature: float = 2.0
    decode_to_level: bool = True  # the generator stops decoding at the sample's level
    targets: str = "from_injected_level"  # from_a0 | from_injected_level
    partition: str = "batch_split"  # batch_split | temporal
    split: str = "ceil"  # ceil (the PLR authors' classifier) | largest_remainder
    generator_extra_layer: bool = False  # the PLR authors' VAE: z -> h -> a_{L-1} (h no level)
    save_samples: bool = True  # samples_task{t}.png per task when level 0 is an image
    seed: int = 0


def chunk_sizes(f: list[float], n: int, split: str = "largest_remainder") -> list[int]:
    """Split `n` replay samples by the fractions `f` (sums to n). `largest_remainder`:
    floor of f_k * n, the leftover samples to the largest remainders. `ceil` (the PLR
    authors' `Classifier.classify`): every level but the last takes ceil(f_k * n) of what
    is left, the last level the rest, so low levels get up to one sample more each."""
    if split == "ceil":
        sizes, left = [], n
        for fk in f[:-1]:
            sizes.append(min(math.ceil(fk * n), left))
            left -= sizes[-1]
        return [*sizes, left]
    if split != "largest_remainder":
        raise ValueError(f"method.split={split!r}: choose one of {list(SPLITS)}")
    raw = [fk * n for fk in f]
    sizes = [int(r) for r in raw]
    by_remainder = sorted(range(len(f)), key=lambda k: raw[k] - sizes[k], reverse=True)
    for k in by_remainder[: n - sum(sizes)]:
        sizes[k] += 1
    return sizes


def temporal_level(credits: torch.Tensor, f: list[float]) -> int:
    """The level that replays the whole batch this step under `partition=temporal`: each
    step adds f_k to level k's credit and spends 1 of the largest, so level k is chosen
    on a fraction f_k of the steps (deterministically, evenly spread)."""
    credits += torch.tensor(f, dtype=credits.dtype)
    k = int(credits.argmax())
    credits[k] -= 1
    return k


def classify_chunks(view: LevelView, chunks: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Logits of replay chunks, chunk (k, a_k) entering the classifier at level k."""
    return torch.cat([view.forward_from(a, k) for k, a in chunks])


def distill(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KD loss of van de Ven et al.: T^2 * mean_batch(-sum_c p_c log_softmax(logits/T)_c),
    p = softmax(targets/T) over the first `targets.shape[1]` (old) logits and 0 on the
    rest, so replay also pushes the new classes' logits down."""
    p = F.softmax(targets / temperature, dim=1)
    log_q = F.log_softmax(logits / temperature, dim=1)[:, : targets.shape[1]]
    return -(p * log_q).sum(1).mean() * temperature**2


class LatentReplay(Method):
    """Replays samples of a conditional VAE (`LevelVAE`) into the classifier.

    A replay minibatch of `replay_batch_size` is split by injection level with
    frequencies `self.frequencies` (f_0 .. f_{L-1}, summing to 1). On task t the loss is
    (1/t) CE(current) + (1 - 1/t) KD_T(replay, previous classifier). The generator, an
    auxiliary network the base steps with the classifier, trains on the levels it replays
    (`recon_levels`), read from the classifier's own pass on the current batch, and on its
    previous copy's samples, weighted the same way (loss term `generator`). FLOPs are
    tagged `current`, `replay` (generator sampling + classifier replay pass), `teacher`
    and `generator_train`.
    """

    supported_scenarios = ("class_il", "task_il")

    def __init__(self, *, replay_batch_size: int, z_dim: int,
                 generator_lr: float, per_class_prior: bool,
                 gate_prop: float, recon_loss: str,
                 kl_divisor: float | None, distill: bool, temperature: float,
                 decode_to_level: bool, targets: str,
                 partition: str, split: str,
                 generator_extra_layer: bool, save_samples: bool,
                 seed: int, **kw):
        super().__init__(**kw)
        if targets not in TARGETS:
            raise ValueError(f"method.targets={targets!r}: choose one of {list(TARGETS)}")
        if partition not in PARTITIONS:
            raise ValueError(f"method.partition={partition!r}: choose one of {list(PARTITIONS)}")
        if split not in SPLITS:
            raise ValueError(f"method.split={split!r}: choose one of {list(SPLITS)}")
        self.generator_options = dict(z_dim=z_dim, per_class_prior=per_class_prior,
                                      gate_prop=gate_prop, seed=seed, kl_divisor=kl_divisor,
                                      extra_layer=generator_extra_layer)
        self.recon_loss = recon_loss
        self.generator_lr = generator_lr
        self.replay_batch_size = replay_batch_size
        self.use_distill, self.temperature = distill, temperature
        self.decode_to_level, self.targets, self.partition = decode_to_level, targets, partition
        self.split = split
        self.save_samples = save_samples
        self.view = LevelView(self.model)
        self.frequencies = [1.0] + [0.0] * (self.view.n_levels - 1)
        self.prev_model = self.prev_view = self.prev_generator = None
        self.task_count = 0
        self.credits = torch.zeros(self.view.n_levels, dtype=torch.float64)
        # samples that entered the classifier at each level, and replay steps: host ints
        # read off the chunks' shapes, so counting needs no device sync
        self.replayed, self.replay_steps = [0] * self.view.n_levels, 0
        device = next(self.model.parameters()).device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def wrap_model(self, model):
        """The level view and the generator are built on the model as plugins left it."""
        self.view = LevelView(model)
        device = next(model.parameters()).device
        affine = self.pixel_affine()
        recon_loss = self.recon_loss
        if recon_loss == "auto":
            recon_loss = "bce" if affine is not None else "mse"
        self.generator = LevelVAE(self.view.dims, self.class_mask.shape[1],
                                  recon_levels=self.recon_levels(), recon_loss=recon_loss,
                                  pixel_affine=affine, **self.generator_options).to(device)
        self.add_auxiliary("generator", self.generator,
                           functools.partial(torch.optim.Adam, lr=self.generator_lr))
        return model

    def recon_levels(self) -> list[int]:
        """The levels the generator learns to reconstruct (those the method replays)."""
        return [k for k, f in enumerate(self.frequencies) if f > 0]

    def pixel_affine(self):
        """(a, b) with level 0 = a * pixel + b when level 0 is the raw image (flattened
        pixels through the runner's normalisation), else None (features)."""
        scale, shift = self.preprocess.scale.flatten(), self.preprocess.shift.flatten()
        identity = bool((scale == 1).all() and (shift == 0).all())  # cached features
        flatten_only = all(isinstance(m, torch.nn.Flatten) for m in self.view.extractor)
        if identity or not flatten_only or self.view.dims[0] % len(scale):
            return None
        per_channel = self.view.dims[0] // len(scale)
        return (255 * scale).repeat_interleave(per_channel), (-shift).repeat_interleave(per_channel)

    # -- phases ----------------------------------------------------------------------------
    def before_task(self, task):
        self.task_count += 1
        self.active = self.seen_mask
        self.old_classes = self.old_mask.nonzero().flatten()

    def loss(self, batch):
        self.input_shape = tuple(batch.x.shape[1:])
        w = 1.0 / self.task_count
        with self.flops("current"):
            acts, logits = self.view.levels(self.preprocess(batch.x, train=True))
            self.ctx.record_logits(logits)  # the step's logits of the batch, for plugins
            if self.scenario == "class_il":
                logits = logits.masked_fill(~self.active, float("-inf"))
            loss = self.cross_entropy(logits, batch.y, batch.task)
        if self.prev_model is not None:
            loss = w * loss + (1 - w) * self.replay_loss()
        return {"classifier": loss,
                "generator": self.generator_loss([a.detach() for a in acts], batch.y, w)}

    def replay_loss(self) -> torch.Tensor:
        n = self.replay_batch_size
        if self.partition == "temporal":
            k = temporal_level(self.credits, self.frequencies)
            sizes = [n if i == k else 0 for i in range(len(self.frequencies))]
        else:
            sizes = chunk_sizes(self.frequencies, n, self.split)
        full = self.targets == "from_a0" or not self.decode_to_level
        with torch.no_grad(), self.flops("replay"):
            z, yr = self.prev_generator.sample_z(n, self.old_classes, self.gen)
            chunks, bottoms, start = [], [], 0
            for k, size in enumerate(sizes):
                if size:
                    s = slice(start, start + size)
                    levels = self.prev_generator.decode(z[s], yr[s], down_to=0 if full else k)
                    chunks.append((k, levels[k]))
                    bottoms.append((0, levels[0]) if self.targets == "from_a0" else (k, levels[k]))
                    start += size
        with self.flops("replay"):
            logits = classify_chunks(self.view, chunks)
        for k, a in chunks:
            self.replayed[k] += a.shape[0]
        self.replay_steps += 1
        with torch.no_grad(), self.flops("teacher"):
            targets = classify_chunks(self.prev_view, bottoms)
        # logits over the classes seen so far, the old ones first (labels are task-ordered)
        logits, targets = logits[:, self.active], targets[:, self.old_classes]
        if self.use_distill:
            return distill(logits, targets, self.temperature)
        return F.cross_entropy(logits, targets.argmax(1))

    def generator_loss(self, acts, y, w) -> torch.Tensor:
        with self.flops("generator_train"):
            loss = self.generator.loss(acts, y)
            if self.prev_generator is not None:
                with torch.no_grad():
                    z, yr = self.prev_generator.sample_z(len(y), self.old_classes, self.gen)
                    levels = self.prev_generator.decode(z, yr)
                loss = w * loss + (1 - w) * self.generator.loss(levels, yr)
        return loss

    def after_task(self, task):
        self.snapshot()
        if self.save_samples and self.ctx.artifacts.enabled:
            self.save_grid(task.id)

    def snapshot(self) -> None:
        """Frozen copies of the classifier and the generator: the teacher and the replay
        source of the next task (their FLOPs go to the same counter)."""
        self.prev_model = self.frozen_copy(self.model).eval()
        self.prev_view = LevelView(self.prev_model)
        self.prev_generator = self.frozen_copy(self.generator)

    # -- output ----------------------------------------------------------------------------
    def save_grid(self, task_id: int, per_class: int = 8) -> None:
        """`samples_task{t}.png`: `per_class` generated inputs per class seen, one row per
        class: the class asked for under a per-class prior, else (unconditional sampling)
        the current classifier's prediction, rows sorted by it. Its own RNG, so drawing
        the figure does not change the run."""
        shape = getattr(self, "input_shape", None)
        if shape is None or len(shape) != 3 or shape[0] not in (1, 3) \
                or self.view.dims[0] != shape[0] * shape[1] * shape[2]:
            return  # level 0 is not an image (e.g. conv features)
        classes = self.active.nonzero().flatten().repeat_interleave(per_class)
        gen = torch.Generator(device=classes.device).manual_seed(task_id)
        self.counter.enabled = False
        with torch.no_grad():
            a0 = self.generator.decode(self.generator.z_for(classes, gen), classes)[0]
            if not self.generator.per_class_prior:
                logits = self.view.levels(a0)[1]
                a0 = a0[logits.masked_fill(~self.active, float("-inf")).argmax(1).argsort()]
        self.counter.enabled = True
        img = (a0.view(-1, *shape) + self.preprocess.shift) / self.preprocess.scale / 255
        self.ctx.artifacts.save_image(f"samples_task{task_id}.png", img.clamp(0, 1),
                                      nrow=per_class)

    def summary(self) -> dict:
        """The nominal level frequencies next to the executed ones: samples per level per
        replay step and their fractions, counted from what the steps replayed."""
        total, steps = sum(self.replayed), max(self.replay_steps, 1)
        return {**super().summary(),
                "replay_frequencies_nominal": list(self.frequencies),
                "replay_samples_per_step": [c / steps for c in self.replayed],
                "replay_frequencies_effective": [c / total if total else 0.0
                                                 for c in self.replayed],
                "replay_samples_per_level": list(self.replayed),
                "replay_steps": self.replay_steps}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(task_count=self.task_count, credits=self.credits.clone(),
                     replayed=list(self.replayed), replay_steps=self.replay_steps,
                     sample_rng=self.gen.get_state(),
                     prev_model=self.prev_model.state_dict() if self.prev_model else None,
                     prev_generator=(self.prev_generator.state_dict()
                                     if self.prev_generator else None))
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.task_count, self.credits = state["task_count"], state["credits"].clone()
        self.replayed = list(state.get("replayed", [0] * self.view.n_levels))
        self.replay_steps = state.get("replay_steps", 0)
        self.gen.set_state(state["sample_rng"])
        if state["prev_model"] is not None:
            self.snapshot()
            self.prev_model.load_state_dict(state["prev_model"])
            self.prev_generator.load_state_dict(state["prev_generator"])
