"""Herding exemplar memory (iCaRL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_bench.data.batch import Batch
from cl_bench.memory.base import BufferConf, Memory
from cl_bench.schemas import defaults_from


def herding_order(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of `m` exemplars picked greedily so the mean of the first k picked stays
    closest to the class mean, for every k (iCaRL's herding, on L2-normalised features)."""
    feats = F.normalize(features, dim=1)
    mean = feats.mean(0)
    running = torch.zeros_like(mean)
    free = torch.ones(len(feats), dtype=torch.bool, device=feats.device)
    picked = []
    for k in range(1, min(m, len(feats)) + 1):
        dist = (mean - (running + feats) / k).norm(dim=1).masked_fill(~free, float("inf"))
        i = dist.argmin()
        picked.append(i)
        free[i] = False
        running += feats[i]
    return torch.stack(picked) if picked else torch.empty(0, dtype=torch.long)


@defaults_from(BufferConf)
class Herding(Memory):
    """Exemplar memory of iCaRL (Rebuffi et al., CVPR 2017): `size // classes seen`
    exemplars per class, chosen by herding on the model's features when a task ends
    (`select`), kept in herding order so a class shrinks by dropping its tail."""

    capabilities = frozenset({"sample", "select"})

    def __init__(self, size: int, device="cpu", seed: int = 0):
        super().__init__(size, device, seed)
        self.x: torch.Tensor | None = None
        self.y = torch.empty(0, dtype=torch.int64, device=self.device)
        self.task = torch.empty(0, dtype=torch.int64, device=self.device)
        self.rank = torch.empty(0, dtype=torch.int64, device=self.device)

    def add(self, batch) -> None:
        raise RuntimeError(
            "memory=herding picks exemplars from features at the end of each task; use it "
            "with method=icarl, or choose memory=reservoir/class_balanced/ring"
        )

    def select(self, batch: Batch, features: torch.Tensor) -> None:
        """Add the herded exemplars of the classes in `batch`, then trim every class to its
        share."""
        x, y, task_id = (t.to(self.device) for t in (batch.x, batch.y, batch.task))
        features = features.to(self.device)
        classes = y.unique()
        n_seen = len(self.y.unique()) + len(classes)
        per_class = self.size // n_seen
        parts = [(self.x, self.y, self.task, self.rank)] if self.x is not None else []
        for c in classes:
            idx = (y == c).nonzero().squeeze(1)
            order = idx[herding_order(features[idx], per_class)]
            parts.append((x[order], y[order], task_id[order],
                          torch.arange(len(order), device=self.device)))
        self.x, self.y, self.task, self.rank = (torch.cat(p) for p in zip(*parts, strict=True))
        keep = self.rank < per_class
        self.x, self.y, self.task, self.rank = (t[keep] for t in (self.x, self.y, self.task,
                                                                   self.rank))

    def sample(self, n: int, *extras: str, with_index: bool = False) -> Batch:
        if extras:
            raise ValueError(f"memory=herding stores no extras, asked for {list(extras)}")
        idx = torch.randint(0, len(self), (n,), generator=self.generator, device=self.device)
        return Batch(self.x[idx], self.y[idx], self.task[idx], {}, idx if with_index else None)

    def stored(self) -> Batch:
        return Batch(self.x, self.y, self.task)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        tensors = [self.y, self.task, self.rank] + ([self.x] if self.x is not None else [])
        return sum(t.nbytes for t in tensors)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "x": self.x, "y": self.y, "task": self.task,
                "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.x, self.y, self.task, self.rank = (state[k] for k in ("x", "y", "task", "rank"))
