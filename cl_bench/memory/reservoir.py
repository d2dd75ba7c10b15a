"""Reservoir sampling memory."""

from __future__ import annotations

import numpy as np
import torch

from cl_bench.memory.base import BufferConf, SelectionBuffer
from cl_bench.schemas import defaults_from


@defaults_from(BufferConf)
class Reservoir(SelectionBuffer):
    """Reservoir sampling (Vitter, 1985, algorithm R), as used by ER (Chaudhry et al.,
    2019): every sample seen so far is in memory with the same probability size / seen.

    A batch is inserted as if one sample at a time: sample number p (from 0) draws a slot
    uniformly in [0, p] and enters when it is below `size`; a later sample of the batch
    that draws the same slot overwrites an earlier one. The slot arithmetic runs in numpy
    on the host, a handful of operations per batch, so insertion costs little next to a
    training step; only the writes touch the buffer's device.
    """

    def __init__(self, size: int, device="cpu", seed: int = 0):
        super().__init__(size, device, seed)
        self.rng = np.random.default_rng(seed)
        self.keys = torch.empty(0, device=self.device)  # the key-based selection is not used

    def add(self, batch) -> None:
        if self.size == 0:
            return
        n = len(batch.y)
        pos = np.arange(self.seen, self.seen + n)
        self.seen += n
        slots = np.where(pos < self.size, pos, (self.rng.random(n) * (pos + 1)).astype(np.int64))
        incoming = np.flatnonzero(slots < self.size)
        if len(incoming) == 0:
            return
        slots = slots[incoming]
        if len(slots) > 1:  # the last sample of the batch to draw a slot keeps it
            _, last = np.unique(slots[::-1], return_index=True)
            keep = np.sort(len(slots) - 1 - last)
            incoming, slots = incoming[keep], slots[keep]
        x, y, task_id = (t.to(self.device) for t in (batch.x, batch.y, batch.task))
        self.write(torch.from_numpy(slots).to(self.device),
                   torch.from_numpy(incoming).to(self.device), x, y, task_id, batch.extras)
        self.count = min(self.size, self.seen)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]
