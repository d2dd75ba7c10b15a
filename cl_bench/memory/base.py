"""Memory interface and the fixed-capacity buffer the selection policies share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_bench.data.batch import Batch
from cl_bench.schemas import defaults_from, schema


@schema("memory", "memory")
@dataclass
class MemoryConf:
    _target_: str = "???"
    name: str = "???"
    size: int = 0


@schema("memory", "buffer")
@dataclass
class BufferConf(MemoryConf):
    """reservoir, class_balanced, herding, ring, coreset."""
    size: int = 500  # the seq-MNIST tables' buffer (DER, Buzzega et al.: 200 / 500 / 5120)


@defaults_from(MemoryConf)  # size 0: no memory, as memory=none
class Memory:
    """A replay memory: `add(batch)`, `sample(n) -> Batch`, `update(index, loss=...)`,
    `stored()` (a read-only view of what is held), `len`, `nbytes`.

    `capabilities` names what a memory offers beyond holding samples; a method lists the
    ones it needs in `memory_needs`, checked when the run is built. Memories with
    `wants_losses` (e.g. carousel's loss-aware swaps) use the per-sample replay losses
    methods report through `update`.
    """

    capabilities: frozenset[str] = frozenset({"add", "sample"})
    wants_losses = False
    stores_files = False  # True: built with `run_dir`, the folder it may write to

    def __init__(self, size: int, device: str | torch.device = "cpu", seed: int = 0):
        if size < 0:
            raise ValueError(f"memory.size must be >= 0, got {size}")
        self.size = size
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def add(self, batch: Batch) -> None:
        raise NotImplementedError

    def sample(self, n: int, *extras: str, with_index: bool = False) -> Batch:
        """`n` samples with the named extras; `with_index`: their memory indices too."""
        raise NotImplementedError

    def update(self, index: torch.Tensor, *, loss: torch.Tensor | None = None) -> None:
        """Per-sample information about the samples at `index` (as `sample` returned it):
        `loss`, the detached per-sample replay loss. Ignored unless the memory uses it."""

    def stored(self) -> Batch:
        """Everything held, as a batch of views: read it, do not write to it."""
        raise NotImplementedError

    def __len__(self) -> int:
        return 0

    @property
    def nbytes(self) -> int:
        return 0

    def stats(self) -> dict:
        """Extra numbers for the run summary (called once, when training ends)."""
        return {}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this memory is (for checkpoints)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class NoMemory(Memory):
    """No replay memory (finetune, joint)."""

    capabilities = frozenset()

    def add(self, batch) -> None:
        pass

    def sample(self, n, *extras, with_index=False):
        raise RuntimeError("memory=none holds no samples; choose memory=reservoir or similar")

    def stored(self) -> Batch:
        raise RuntimeError("memory=none holds no samples; choose memory=reservoir or similar")


class SelectionBuffer(Memory):
    """A buffer of at most `size` samples that keeps, among everything offered to it,
    the samples a policy selects by per-sample random keys.

    Every sample gets a key u ~ U(0, 1) when offered. A policy keeps the samples with
    the smallest keys (within its constraints), which gives each seen sample the same
    chance to be in memory, exactly as reservoir sampling does, and lets a whole batch be
    inserted with tensor ops. Evicted samples are overwritten in place; nothing else moves.
    """

    def __init__(self, size: int, device="cpu", seed: int = 0):
        super().__init__(size, device, seed)
        self.count = 0  # samples held
        self.seen = 0  # samples offered so far
        self.x: torch.Tensor | None = None
        self.y = torch.empty(size, dtype=torch.int64, device=self.device)
        self.task = torch.empty(size, dtype=torch.int64, device=self.device)
        self.keys = torch.empty(size, device=self.device)
        self.extra: dict[str, torch.Tensor] = {}  # per-sample tensors passed to add(**extra)

    def keep(self, keys: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Bool mask over candidates (held first, then offered): exactly `size` True."""
        raise NotImplementedError

    def new_keys(self, n: int) -> torch.Tensor:
        """Keys of `n` newly offered samples (called after `seen` counts them)."""
        return torch.rand(n, generator=self.generator, device=self.device)

    def add(self, batch: Batch) -> None:
        if self.size == 0:
            return
        x, y, task_id = (t.to(self.device) for t in (batch.x, batch.y, batch.task))
        n = len(x)
        self.seen += n
        keys = self.new_keys(n)
        held = self.count
        if held + n <= self.size:
            slots = torch.arange(held, held + n, device=self.device)
            incoming = torch.arange(n, device=self.device)
        else:
            mask = self.keep(torch.cat([self.keys[:held], keys]), torch.cat([self.y[:held], y]))
            free = torch.arange(held, self.size, device=self.device)
            slots = torch.cat([(~mask[:held]).nonzero().squeeze(1), free])
            incoming = mask[held:].nonzero().squeeze(1)
        self.keys[slots] = keys[incoming]
        self.write(slots, incoming, x, y, task_id, batch.extras)
        self.count = min(self.size, held + n)

    def write(self, slots, incoming, x, y, task_id, extra: dict) -> None:
        """Store samples `incoming` of the batch in buffer `slots`."""
        if self.x is None:
            self.x = torch.empty((self.size, *x.shape[1:]), dtype=x.dtype, device=self.device)
        self.x[slots] = x[incoming]
        self.y[slots] = y[incoming]
        self.task[slots] = task_id[incoming]
        for name, value in extra.items():
            if name not in self.extra:
                self.extra[name] = torch.empty((self.size, *value.shape[1:]), dtype=value.dtype,
                                               device=self.device)
            self.extra[name][slots] = value.to(self.device)[incoming]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "count": self.count, "seen": self.seen, "x": self.x,
                "y": self.y, "task": self.task, "keys": self.keys, "extra": self.extra}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.count, self.seen, self.x = state["count"], state["seen"], state["x"]
        self.y, self.task, self.keys = state["y"], state["task"], state["keys"]
        self.extra = state.get("extra", {})

    def sample(self, n: int, *extras: str, with_index: bool = False) -> Batch:
        """`n` samples drawn uniformly with replacement."""
        idx = torch.randint(0, self.count, (n,), generator=self.generator, device=self.device)
        return Batch(self.x[idx], self.y[idx], self.task[idx],
                     {k: self.extra[k][idx] for k in extras}, idx if with_index else None)

    def stored(self) -> Batch:
        n = self.count
        return Batch(self.x[:n], self.y[:n], self.task[:n],
                     {k: v[:n] for k, v in self.extra.items()})

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        tensors = [self.y, self.task, self.keys, *self.extra.values()]
        tensors += [self.x] if self.x is not None else []
        return sum(t.nbytes for t in tensors)
