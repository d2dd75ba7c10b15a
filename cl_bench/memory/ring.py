"""Ring buffer memory: FIFO per class."""

from __future__ import annotations

import torch

from cl_bench.memory.class_balanced import ClassBalanced


class Ring(ClassBalanced):
    """Per-class ring buffer (the `ringbuffer` episodic memory of CarM, Lee et al., DAC 2022,
    and of Chaudhry et al., 2019): each class seen gets an equal share of the buffer and
    keeps its most recent samples, the oldest being overwritten first."""

    def new_keys(self, n):
        # newer samples get smaller keys, and the class-balanced policy keeps the smallest
        first = self.seen - n
        return -torch.arange(first, first + n, device=self.device, dtype=torch.float64).float()
