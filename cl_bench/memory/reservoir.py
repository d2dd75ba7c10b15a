"""Reservoir sampling memory."""

from __future__ import annotations

import torch

from cl_bench.memory.base import SelectionBuffer


class Reservoir(SelectionBuffer):
    """Reservoir sampling (Vitter, 1985), as used by ER (Chaudhry et al., 2019): every
    sample seen so far is in memory with the same probability size / seen."""

    def keep(self, keys, labels):
        # drop the few largest keys rather than ranking the `size` smallest: far cheaper
        mask = torch.ones(len(keys), dtype=torch.bool, device=keys.device)
        mask[keys.topk(len(keys) - self.size).indices] = False
        return mask

    def may_enter(self, keys, labels):
        # late in a stream most batches hold no key below the buffer's largest one
        return bool((keys < self.keys.max()).any())
