"""Weighted gradient-coreset memory (GCR)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cl_bench.data.batch import Batch
from cl_bench.memory.base import BufferConf, Memory
from cl_bench.memory.reservoir import Reservoir
from cl_bench.schemas import defaults_from, schema


def nonneg_omp(a: torch.Tensor, b: torch.Tensor, k: int, ridge: float = 0.5):
    """Greedy non-negative orthogonal matching pursuit: at most `k` columns of `a` (D, n)
    and weights w > 0 with a[:, cols] @ w ~ b. A column whose least-squares weight turns
    non-positive is dropped and not picked again.

    `ridge` is floored at 1e4 eps x the mean of the Gram diagonal, so that more than D
    columns, or dependent ones, cannot make the system singular (ridge=0 is plain least
    squares otherwise). The search stops once b is matched, or once the best column is
    (numerically) orthogonal to the residual, as a column in the span of the selected ones
    is when the ridge is ~0."""
    eps = torch.finfo(a.dtype).eps
    tol = eps**0.5
    b_norm = float(b.norm())
    col_norms = a.norm(dim=0)
    cols: list[int] = []
    banned = torch.zeros(a.shape[1], dtype=torch.bool, device=a.device)
    w = torch.empty(0, dtype=a.dtype, device=a.device)
    residual = b.clone()
    for _ in range(2 * a.shape[1]):  # every column enters and leaves at most once
        if len(cols) >= k:
            break
        r_norm = float(residual.norm())
        if r_norm <= tol * b_norm:
            break
        corr = (a.T @ residual).masked_fill(banned, float("-inf"))
        j = int(corr.argmax())
        if corr[j] <= tol * col_norms[j] * r_norm:
            break
        cols.append(j)
        banned[j] = True
        while cols:
            sub = a[:, cols]
            gram = sub.T @ sub
            reg = max(ridge, 1e4 * eps * float(gram.diagonal().mean()))
            gram = gram + reg * torch.eye(len(cols), dtype=a.dtype, device=a.device)
            w = torch.linalg.solve(gram, sub.T @ b)
            if (w > 0).all():
                break
            cols = [c for c, wc in zip(cols, w.tolist(), strict=True) if wc > 0]
        residual = b - a[:, cols] @ w if cols else b.clone()
    return torch.tensor(cols, dtype=torch.long, device=a.device), w[: len(cols)]


def class_budgets(counts: list[int], budget: int) -> list[int]:
    """Budget split proportionally to class counts (at least 1 per class present)."""
    total = sum(counts)
    exact = [budget * c / total for c in counts]
    out = [max(1, int(e)) if c else 0 for e, c in zip(exact, counts, strict=True)]
    for i in sorted(range(len(counts)), key=lambda i: int(exact[i]) - exact[i]):
        if sum(out) >= budget:
            break
        if counts[i] > out[i]:
            out[i] += 1
    return out


@schema("memory", "coreset")
@dataclass
class CoresetConf(BufferConf):
    pool_size: int = 200  # reservoir of candidates from the current task
    ridge: float = 0.5  # ridge term of the OMP least squares


@defaults_from(CoresetConf)
class Coreset(Memory):
    """GCR's weighted coreset (Tiwari et al., CVPR 2022, "GCR: Gradient Coreset Based
    Replay Buffer Selection for Continual Learning").

    During a task, samples (with their logits) enter a reservoir candidate pool of
    `pool_size`. At the end of task t (`consolidate`), every task gets `size // t` slots:
    each old task's slice is re-selected from itself and the new task's from the pool, per
    class, by non-negative OMP so that the weighted sum of the selected samples' gradients
    matches the (weighted) sum over the candidates. The weights are stored with the samples
    and rescaled so that each class's weights sum to the number of samples they represent
    (the class's samples seen, for a new task; the slice's previous weight, for an old one).
    `sample` draws uniformly from coreset and pool (pool weight 1); ask for the "weight"
    extra to get the weights.
    """

    def __init__(self, size: int, pool_size: int, ridge: float, device="cpu", seed: int = 0):
        super().__init__(size, device, seed)
        self.pool = Reservoir(pool_size, device, seed + 1)
        self.ridge = ridge
        self.rows: dict[str, torch.Tensor] = {}  # x, y, task, weight, extras: the coreset
        self._labels: list[torch.Tensor] = []  # labels offered this task (for the counts)

    capabilities = frozenset({"add", "sample", "consolidate", "weights"})

    def add(self, batch) -> None:
        self._labels.append(batch.y.to(self.device))
        self.pool.add(batch)

    def _pool_rows(self) -> dict[str, torch.Tensor]:
        n, pool = len(self.pool), self.pool
        rows = {"x": pool.x[:n], "y": pool.y[:n], "task": pool.task[:n],
                **{k: v[:n] for k, v in pool.extra.items()}}
        rows["weight"] = torch.ones(n, device=self.device)
        return rows

    def sample(self, n: int, *extras: str, with_index: bool = False) -> Batch:
        held, pooled = len(self.rows.get("y", ())), len(self.pool)
        idx = torch.randint(0, held + pooled, (n,), generator=self.generator, device=self.device)
        names = ("x", "y", "task", *extras)
        if held == 0:
            out = [self._pool_rows()[k][idx] for k in names]
            return Batch(*out[:3], dict(zip(extras, out[3:], strict=True)),
                         idx if with_index else None)
        pool = self._pool_rows() if pooled else None
        from_pool = idx >= held
        out = []
        for k in names:
            value = self.rows[k][idx.clamp(max=held - 1)]
            if pool is not None:
                other = pool[k][(idx - held).clamp(min=0)]
                mask = from_pool.view(-1, *[1] * (value.dim() - 1))
                value = torch.where(mask, other, value)
            out.append(value)
        return Batch(*out[:3], dict(zip(extras, out[3:], strict=True)),
                     idx if with_index else None)

    def stored(self) -> Batch:
        """The coreset followed by the current task's candidate pool (weight 1)."""
        parts = [self.rows] if self.rows else []
        if len(self.pool):
            parts.append(self._pool_rows())
        rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return Batch(rows["x"], rows["y"], rows["task"],
                     {k: v for k, v in rows.items() if k not in ("x", "y", "task")})

    def consolidate(self, embed: Callable[[dict], torch.Tensor], n_tasks: int) -> None:
        """Re-select every old task's slice and select the new task's from the pool.
        `embed(rows)` gives one gradient embedding (a row) per candidate."""
        per_task = self.size // n_tasks
        slices = []
        if self.rows:
            for t in self.rows["task"].unique():
                keep = self.rows["task"] == t
                slices.append(({k: v[keep] for k, v in self.rows.items()}, None))
        if len(self.pool):
            seen = torch.bincount(torch.cat(self._labels))
            slices.append((self._pool_rows(), seen))
        chosen = [self._select(rows, embed, per_task, seen) for rows, seen in slices]
        self.rows = {k: torch.cat([c[k] for c in chosen]) for k in chosen[0]} if chosen else {}
        self.pool = Reservoir(self.pool.size, self.device, int(self.generator.initial_seed())
                              + n_tasks)
        self._labels = []

    def _select(self, rows, embed, budget, seen):
        y = rows["y"]
        classes = y.unique().tolist()
        counts = [int((y == c).sum()) for c in classes]
        picks, weights = [], []
        grads = embed(rows)
        for c, quota in zip(classes, class_budgets(counts, budget), strict=True):
            idx = (y == c).nonzero().squeeze(1)
            represented = float(seen[c]) if seen is not None else float(rows["weight"][idx].sum())
            target = (rows["weight"][idx].unsqueeze(1) * grads[idx]).sum(0)
            cols, w = nonneg_omp(grads[idx].T.double(), target.double(), quota, self.ridge)
            if len(cols) < min(quota, len(idx)):  # pad at random with weight 1, as GCR does
                free = torch.ones(len(idx), dtype=torch.bool, device=idx.device)
                free[cols] = False
                spare = free.nonzero().squeeze(1)
                spare = spare[torch.randperm(len(spare), generator=self.generator,
                                             device=self.device)][: quota - len(cols)]
                cols = torch.cat([cols, spare])
                w = torch.cat([w, torch.ones(len(spare), dtype=w.dtype, device=w.device)])
            picks.append(idx[cols])
            weights.append((w * represented / w.sum()).float())
        picked = torch.cat(picks)
        out = {k: v[picked] for k, v in rows.items()}
        out["weight"] = torch.cat(weights)
        return out

    def __len__(self) -> int:
        return len(self.rows.get("y", ())) + len(self.pool)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.rows.values()) + self.pool.nbytes

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rows": self.rows, "pool": self.pool.state_dict(),
                "labels": self._labels}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rows, self._labels = state["rows"], state["labels"]
        self.pool.load_state_dict(state["pool"])
