"""The typed batch that flows between the runner, methods, plugins and memories."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """Samples (uint8 images or features) with their labels and task ids, plus named
    per-sample `extras` (e.g. stored `logits`, coreset `weight`). A batch sampled from a
    memory with `with_index=True` carries the memory `index` of each sample, which the
    method hands back with `memory.update(index, loss=...)`. A training batch the runner
    draws carries `sample`, the positions of its samples in the task's training data
    (`Method.train_data(task)`), for plugins that keep per-sample statistics."""

    x: torch.Tensor
    y: torch.Tensor
    task: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    index: torch.Tensor | None = None
    sample: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx) -> Batch:
        return Batch(self.x[idx], self.y[idx], self.task[idx],
                     {k: v[idx] for k, v in self.extras.items()},
                     None if self.index is None else self.index[idx],
                     None if self.sample is None else self.sample[idx])

    def __getattr__(self, name: str) -> torch.Tensor:
        # batch.logits, batch.weight: the named extras (only called for unknown attributes)
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"batch has no field or extra {name!r} (extras: {list(extras)})")

    def cat(self, *others: Batch) -> Batch:
        """This batch followed by `others` (extras kept where every part has them; no
        `index` or `sample`)."""
        parts = [self, *others]
        names = [k for k in self.extras if all(k in p.extras for p in others)]
        return Batch(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                     torch.cat([p.task for p in parts]),
                     {k: torch.cat([p.extras[k] for p in parts]) for k in names})

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), self.y.to(device), self.task.to(device),
                     {k: v.to(device) for k, v in self.extras.items()},
                     None if self.index is None else self.index.to(device),
                     None if self.sample is None else self.sample.to(device))
