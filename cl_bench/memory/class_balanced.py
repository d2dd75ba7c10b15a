"""Class-balanced memory: equal share of the buffer per class seen."""

from __future__ import annotations

import torch

from cl_bench.memory.base import BufferConf, SelectionBuffer
from cl_bench.schemas import defaults_from


def balanced_quotas(counts: list[int], capacity: int, order: list[int]) -> list[int]:
    """Water-filling: the largest level L with sum(min(count, L)) <= capacity, the slots
    left over going one each to classes above L, in `order`."""
    quotas = [0] * len(counts)
    level = 0
    while True:
        filled = sum(min(c, level + 1) for c in counts)
        if filled > capacity or level + 1 > max(counts, default=0):
            break
        level += 1
    quotas = [min(c, level) for c in counts]
    left = capacity - sum(quotas)
    for c in order:
        if left == 0:
            break
        if counts[c] > quotas[c]:
            quotas[c] += 1
            left -= 1
    return quotas


@defaults_from(BufferConf)
class ClassBalanced(SelectionBuffer):
    """Class-balanced reservoir (in the spirit of CBRS, Chrysakis & Moens, 2020): each
    class seen gets an equal share of the buffer, and within a class every sample seen
    is kept with the same probability."""

    def keep(self, keys, labels):
        n_classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=n_classes)
        order = torch.randperm(n_classes, generator=self.generator, device=keys.device)
        quotas = torch.tensor(
            balanced_quotas(counts.tolist(), self.size, order.tolist()), device=keys.device
        )
        by_key = keys.argsort()
        by_class = labels[by_key].argsort(stable=True)
        ranked = by_key[by_class]  # candidates grouped by class, smallest key first
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keys), device=keys.device) - starts[labels[ranked]]
        mask = torch.zeros(len(keys), dtype=torch.bool, device=keys.device)
        mask[ranked[rank < quotas[labels[ranked]]]] = True
        return mask
