"""Experience replay."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.methods.base import Method, MethodConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "replay")
@dataclass
class ReplayConf(MethodConf):
    # = budget.batch_size: RER pairs the i-th current and replayed samples
    replay_batch_size: int = 10


@defaults_from(ReplayConf)
class ER(Method):
    """Experience Replay (Chaudhry et al., 2019, "On Tiny Episodic Memories in Continual
    Learning"): each step trains on the current batch joined with a batch sampled from
    memory; the current batch then enters memory under the memory's policy."""

    memory_needs = frozenset({"add", "sample"})
    supported_streams = ("task", "online", "task_free", "blurry")  # nothing at boundaries

    def __init__(self, replay_batch_size: int, **kw):
        super().__init__(**kw)
        if replay_batch_size < 1:
            raise ValueError(f"method.replay_batch_size must be >= 1, got {replay_batch_size}")
        self.replay_batch_size = replay_batch_size

    def loss(self, batch):
        if not len(self.memory):
            return super().loss(batch)
        replayed = self.replay(self.replay_batch_size)
        joined = batch.cat(replayed)
        logits = self.forward(joined.x)
        self.report_ce(replayed, logits[-len(replayed):])  # e.g. carousel's loss-aware swaps
        return {"ce": self.cross_entropy(logits, joined.y, joined.task)}

    def after_step(self, batch):
        self.memory.add(batch)
