"""Internal replay with the switchable ingredients of Brain-Inspired Replay."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.methods.latent_replay import LatentReplay, LatentReplayConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "internal_replay")
@dataclass
class InternalReplayConf(LatentReplayConf):
    replay_level: int = 0
    gate_prop: float = 0.8  # BI-R's decoder gating (its split-MNIST default; CIFAR-100: 0.7)


@defaults_from(InternalReplayConf)
class InternalReplay(LatentReplay):
    """Internal replay (van de Ven, Siegelmann & Tolias, 2020, "Brain-inspired replay for
    continual learning with artificial neural networks"): generated features are replayed
    at hidden level `replay_level` (0 = the frozen extractor's output) and the trainable
    layers below that level are frozen after the first task. The BI-R ingredients are
    switches: `per_class_prior` (conditional replay), `gate_prop` (decoder gating based on
    internal context) and `distill` (soft targets)."""

    def __init__(self, replay_level: int, **kw):
        super().__init__(**kw)
        if not 0 <= replay_level < self.view.n_levels:
            raise ValueError(f"method.replay_level={replay_level} must be in "
                             f"[0, {self.view.n_levels - 1}] for this classifier")
        self.replay_level = replay_level
        self.frequencies = [float(k == replay_level) for k in range(self.view.n_levels)]

    def after_task(self, task):
        for layer in self.view.layers[: self.replay_level]:
            layer.requires_grad_(False)
        super().after_task(task)
