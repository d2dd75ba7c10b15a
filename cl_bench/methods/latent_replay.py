"""The shared machinery of generator-based replay: a level-aware conditional VAE trained
next to the classifier, and replay minibatches injected at chosen levels of the
classifier (DGR, Shin et al., 2017; internal replay / BI-R, van de Ven et al., 2020;
Progressive Latent Replay, Pawlak et al., 2022)."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from cl_bench.methods.base import Method
from cl_bench.models.cvae import LevelVAE
from cl_bench.models.levels import LevelView

TARGETS = ("from_a0", "from_injected_level")
PARTITIONS = ("batch_split", "temporal")


def chunk_sizes(f: list[float], n: int) -> list[int]:
    """Split `n` replay samples by the fractions `f` (largest remainder, sums to n)."""
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
    (1/t) CE(current) + (1 - 1/t) KD_T(replay, previous classifier). The generator takes
    one step per iteration on the current batch's levels a_0 .. a_{L-1} (read from the
    classifier's own pass) and on its previous copy's samples, weighted the same way.
    FLOPs are tagged `current`, `replay` (generator sampling + classifier replay pass),
    `teacher` and `generator_train`.
    """

    supported_scenarios = ("class_il", "task_il")

    def __init__(self, *, replay_batch_size: int = 128, z_dim: int = 100,
                 generator_lr: float = 1e-3, per_class_prior: bool = True,
                 gate_prop: float = 0.0, distill: bool = True, temperature: float = 2.0,
                 decode_to_level: bool = True, targets: str = "from_injected_level",
                 partition: str = "batch_split", save_samples: bool = True,
                 seed: int = 0, **kw):
        super().__init__(**kw)
        if targets not in TARGETS:
            raise ValueError(f"method.targets={targets!r}: choose one of {list(TARGETS)}")
        if partition not in PARTITIONS:
            raise ValueError(f"method.partition={partition!r}: choose one of {list(PARTITIONS)}")
        self.view = LevelView(self.model)
        device = next(self.model.parameters()).device
        self.generator = LevelVAE(self.view.dims, self.class_mask.shape[1], z_dim,
                                  per_class_prior, gate_prop, seed).to(device)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=generator_lr)
        self.replay_batch_size = replay_batch_size
        self.use_distill, self.temperature = distill, temperature
        self.decode_to_level, self.targets, self.partition = decode_to_level, targets, partition
        self.save_samples = save_samples
        self.frequencies = [1.0] + [0.0] * (self.view.n_levels - 1)
        self.prev_model = self.prev_view = self.prev_generator = None
        self.task_count = 0
        self.credits = torch.zeros(self.view.n_levels, dtype=torch.float64)
        self.counter = None
        self.run_dir: Path | None = None
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def bind_run(self, counter, run_dir) -> None:
        self.counter, self.run_dir = counter, Path(run_dir)
        counter.attach(self.generator)

    def _tag(self, name: str):
        return self.counter.component(name) if self.counter else nullcontext()

    # -- phases ----------------------------------------------------------------------------
    def before_task(self, task):
        self.task_count += 1
        mask = self.class_mask[: task.id + 1].any(0)
        self.active = mask
        self.old_classes = self.class_mask[: task.id].any(0).nonzero().flatten()

    def observe(self, x, y, task_ids):
        self.input_shape = tuple(x.shape[1:])
        w = 1.0 / self.task_count
        self.optimizer.zero_grad(set_to_none=True)
        with self._tag("current"):
            acts, logits = self.view.levels(self.preprocess(x, train=True))
            if self.scenario == "class_il":
                logits = logits.masked_fill(~self.active, float("-inf"))
            loss = self.cross_entropy(logits, y, task_ids)
        if self.prev_model is not None:
            loss = w * loss + (1 - w) * self.replay_loss()
        loss.backward()
        self.optimizer.step()
        self.generator_step([a.detach() for a in acts], y, w)
        return {"loss": loss.detach()}

    def replay_loss(self) -> torch.Tensor:
        n = self.replay_batch_size
        if self.partition == "temporal":
            k = temporal_level(self.credits, self.frequencies)
            sizes = [n if i == k else 0 for i in range(len(self.frequencies))]
        else:
            sizes = chunk_sizes(self.frequencies, n)
        full = self.targets == "from_a0" or not self.decode_to_level
        with torch.no_grad(), self._tag("replay"):
            z, yr = self.prev_generator.sample_z(n, self.old_classes, self.gen)
            chunks, bottoms, start = [], [], 0
            for k, size in enumerate(sizes):
                if size:
                    s = slice(start, start + size)
                    levels = self.prev_generator.decode(z[s], yr[s], down_to=0 if full else k)
                    chunks.append((k, levels[k]))
                    bottoms.append((0, levels[0]) if self.targets == "from_a0" else (k, levels[k]))
                    start += size
        with self._tag("replay"):
            logits = classify_chunks(self.view, chunks)
        with torch.no_grad(), self._tag("teacher"):
            targets = classify_chunks(self.prev_view, bottoms)
        # logits over the classes seen so far, the old ones first (labels are task-ordered)
        logits, targets = logits[:, self.active], targets[:, self.old_classes]
        if self.use_distill:
            return distill(logits, targets, self.temperature)
        return F.cross_entropy(logits, targets.argmax(1))

    def generator_step(self, acts, y, w) -> None:
        with self._tag("generator_train"):
            loss = self.generator.loss(acts, y)
            if self.prev_generator is not None:
                with torch.no_grad():
                    z, yr = self.prev_generator.sample_z(len(y), self.old_classes, self.gen)
                    levels = self.prev_generator.decode(z, yr)
                loss = w * loss + (1 - w) * self.generator.loss(levels, yr)
            self.gen_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.gen_optimizer.step()

    def after_task(self, task):
        memo = {id(self.counter): self.counter} if self.counter else {}
        self.prev_model = copy.deepcopy(self.model, memo).eval().requires_grad_(False)
        self.prev_view = LevelView(self.prev_model)
        self.prev_generator = copy.deepcopy(self.generator, memo).requires_grad_(False)
        if self.save_samples and self.run_dir is not None:
            self.save_grid(task.id)

    # -- output ----------------------------------------------------------------------------
    def save_grid(self, task_id: int, per_class: int = 8) -> None:
        """`samples_task{t}.png`: `per_class` generated inputs (rows) of every class seen."""
        shape = getattr(self, "input_shape", None)
        if shape is None or len(shape) != 3 or shape[0] not in (1, 3) \
                or self.view.dims[0] != shape[0] * shape[1] * shape[2]:
            return  # level 0 is not an image (e.g. conv features)
        from torchvision.utils import save_image

        classes = self.active.nonzero().flatten().repeat_interleave(per_class)
        if self.counter:
            self.counter.enabled = False
        with torch.no_grad():
            a0 = self.generator.decode(self.generator.z_for(classes, self.gen), classes)[0]
        if self.counter:
            self.counter.enabled = True
        img = (a0.view(-1, *shape) + self.preprocess.shift) / self.preprocess.scale / 255
        save_image(img.clamp(0, 1), self.run_dir / f"samples_task{task_id}.png", nrow=per_class)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(generator=self.generator.state_dict(),
                     gen_optimizer=self.gen_optimizer.state_dict(), task_count=self.task_count,
                     credits=self.credits.clone(), sample_rng=self.gen.get_state(),
                     prev_model=self.prev_model.state_dict() if self.prev_model else None,
                     prev_generator=(self.prev_generator.state_dict()
                                     if self.prev_generator else None))
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.gen_optimizer.load_state_dict(state["gen_optimizer"])
        self.task_count, self.credits = state["task_count"], state["credits"].clone()
        self.gen.set_state(state["sample_rng"])
        if state["prev_model"] is not None:
            memo = {id(self.counter): self.counter} if self.counter else {}
            self.prev_model = copy.deepcopy(self.model, memo).eval().requires_grad_(False)
            self.prev_model.load_state_dict(state["prev_model"])
            self.prev_view = LevelView(self.prev_model)
            self.prev_generator = copy.deepcopy(self.generator, memo).requires_grad_(False)
            self.prev_generator.load_state_dict(state["prev_generator"])
