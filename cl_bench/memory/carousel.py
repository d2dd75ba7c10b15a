"""Carousel memory: a small working buffer in RAM backed by a larger store on disk."""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl_bench.data.batch import Batch
from cl_bench.memory.base import Memory, MemoryConf
from cl_bench.memory.reservoir import Reservoir
from cl_bench.schemas import defaults_from, schema

SWAP_POLICIES = ("random", "loss_aware")
_NP = {torch.uint8: np.uint8, torch.int64: np.int64, torch.float32: np.float32}


@schema("memory", "carousel")
@dataclass
class CarouselConf(MemoryConf):
    size: int = 200  # the working buffer (CarM's smallest setting); storage_size on disk
    storage_size: int = 5000  # samples in the store on disk
    swap_ratio: float = 0.5  # share of each replayed batch swapped with stored samples
    swap_every: int = 16  # samplings between batched hand-overs of writes and swaps to the mover
    swap_policy: str = "random"  # random | loss_aware (swap out the lowest-loss samples)


@defaults_from(CarouselConf)
class Carousel(Memory):
    """CarM (Lee et al., DAC 2022, "Carousel Memory: Rethinking the Design of Episodic
    Memory for Continual Learning"): a working buffer of `size` samples (reservoir) that
    replay samples from, backed by a store of `storage_size` samples on disk (reservoir over
    the stream; one uint8 memory-mapped file for the images, and one per label/extra field,
    under `<run_dir>/carousel/`). Every offered sample is written to the store; after each
    `sample`, a share `swap_ratio` of the replayed slots are swapped (requested in batches
    every `swap_every` samplings) for random stored samples
    of the same class that are not in the working buffer. `swap_policy=loss_aware` swaps
    out, instead, as many working-buffer samples with the lowest training loss seen when
    they were last replayed (the best learned ones; samples not replayed since they came
    in are kept). A background thread does all disk
    reads and writes; finished swaps are applied at the next `sample`, so training never
    waits on disk. A swap is applied whole or not at all: interrupting the thread loses or
    duplicates nothing."""

    def __init__(self, size: int, storage_size: int, swap_ratio: float,
                 swap_every: int, swap_policy: str, run_dir: str | None = None,
                 device="cpu", seed: int = 0):
        super().__init__(size, device, seed)
        if swap_policy not in SWAP_POLICIES:
            raise ValueError(f"memory.swap_policy={swap_policy!r}: choose one of {SWAP_POLICIES}")
        self.wants_losses = swap_policy == "loss_aware"
        self.slot_loss = torch.full((size,), math.inf, device=self.device)
        if run_dir is None:
            raise ValueError("memory=carousel stores samples under the run directory; "
                             "pass run_dir (the runner does)")
        self.dir = Path(run_dir) / "carousel"
        self.storage_size, self.swap_ratio, self.swap_every = storage_size, swap_ratio, swap_every
        # the main thread hands work to the mover in batches, every `swap_every` samplings
        self._writes: list = []
        self._swap_slots: list[torch.Tensor] = []
        self._samplings = 0
        self.em = Reservoir(size, device, seed)
        self.stored_y = torch.full((storage_size,), -1, dtype=torch.int64, device=self.device)
        self.version = torch.zeros(storage_size, dtype=torch.int64, device=self.device)
        self.seen = 0
        self.files: dict[str, np.memmap] = {}
        self.requests: queue.Queue = queue.Queue(maxsize=1024)  # bounds RAM held by pending writes
        self.results: queue.Queue = queue.Queue()
        self.swaps = self.io_wait = self.io_seconds = self.swap_seconds = 0
        self.stop_event = threading.Event()
        self.mover = threading.Thread(target=self._move, daemon=True, name="carousel-mover")
        self.mover.start()

    # -- main thread ------------------------------------------------------------------------
    stores_files = True

    def add(self, batch) -> None:
        x, y, task_id, extra = batch.x, batch.y, batch.task, batch.extras
        n = len(y)
        ids = torch.arange(self.seen, self.seen + n, device=self.device)
        self.seen += n
        draw = (torch.rand(n, generator=self.generator, device=self.device) * (ids + 1)).long()
        pos = torch.where(ids < self.storage_size, ids, draw)
        keep = pos < self.storage_size
        # a batch may draw one position twice: the later sample wins, as in sequential reservoir
        _, last = _first_occurrences(pos.flip(0))
        keep &= torch.zeros_like(keep).index_fill_(0, n - 1 - last, True)
        pos = torch.where(keep, pos, -1)
        self.stored_y[pos[keep]] = y.to(self.device)[keep]
        self.version[pos[keep]] += 1
        self._writes.append((pos, {"x": x, "y": y, "task": task_id, **extra}))
        self.em.add(Batch(x, y, task_id, {**extra, "src": pos}))

    def sample(self, n: int, *extras: str, with_index: bool = False) -> Batch:
        self._apply_finished_swaps()
        em = self.em
        idx = torch.randint(0, em.count, (n,), generator=self.generator, device=self.device)
        out = Batch(em.x[idx], em.y[idx], em.task[idx], {k: em.extra[k][idx] for k in extras},
                    idx if with_index else None)
        self._swap_slots.append(idx[: math.ceil(self.swap_ratio * n)])
        self._samplings += 1
        if self._samplings % self.swap_every == 0:
            self._send_writes()  # before the reads, so the mover reads what is written
            self._request_swaps(self.slots_to_swap(torch.cat(self._swap_slots).unique()))
            self._swap_slots = []
        return out

    def update(self, index, *, loss=None) -> None:
        if loss is not None and self.wants_losses:
            self.slot_loss[index] = loss.float()

    def stored(self) -> Batch:
        held = self.em.stored()
        return Batch(held.x, held.y, held.task,
                     {k: v for k, v in held.extras.items() if k != "src"})

    def slots_to_swap(self, replayed: torch.Tensor) -> torch.Tensor:
        """Working-buffer slots to swap out: the replayed ones (random policy), or as many
        with the lowest recorded loss (loss-aware)."""
        if not self.wants_losses:
            return replayed
        return self.slot_loss[: self.em.count].topk(len(replayed), largest=False).indices

    def _send_writes(self) -> None:
        if self._writes:
            pos = torch.cat([p for p, _ in self._writes]).cpu().numpy()
            fields = {k: torch.cat([f[k] for _, f in self._writes]).cpu().numpy()
                      for k in self._writes[0][1]}
            self._writes = []
            self._put(("write", pos, fields))

    def _request_swaps(self, slots: torch.Tensor) -> None:
        labels = self.em.y[slots]
        in_em = torch.zeros(self.storage_size, dtype=torch.bool, device=self.device)
        src = self.em.extra["src"][: self.em.count]
        in_em[src[src >= 0]] = True
        ok = (self.stored_y.unsqueeze(0) == labels.unsqueeze(1)) & ~in_em
        score = torch.rand(ok.shape, generator=self.generator, device=self.device)
        best, pos = score.masked_fill(~ok, -1.0).max(1)
        found = best >= 0
        pos, slots = pos[found], slots[found]
        pos, first = _first_occurrences(pos)
        slots = slots[first]
        if len(pos) and self.requests.qsize() < 32:
            # swaps are best effort: skipped while the mover is behind, so training never waits
            self.requests.put(("read", slots, pos, self.version[pos].clone()))

    def _apply_finished_swaps(self) -> None:
        while True:
            try:
                slots, pos, versions, data = self.results.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            em = self.em
            src = em.extra["src"][: em.count]
            fresh = ~torch.isin(pos, src)  # another swap may have brought it in meanwhile
            slots, pos, versions = slots[fresh], pos[fresh], versions[fresh]
            still_stored = self.version[pos] == versions
            em.x[slots] = torch.as_tensor(data["x"]).to(self.device)[fresh]
            em.y[slots] = torch.as_tensor(data["y"]).to(self.device)[fresh]
            em.task[slots] = torch.as_tensor(data["task"]).to(self.device)[fresh]
            for k, v in em.extra.items():
                if k != "src":
                    v[slots] = torch.as_tensor(data[k]).to(self.device)[fresh]
            em.extra["src"][slots] = torch.where(still_stored, pos, -1)
            self.slot_loss[slots] = math.inf  # not replayed yet: kept until it has been
            self.swaps += len(slots)
            self.swap_seconds += time.perf_counter() - t0

    def _put(self, request) -> None:
        t0 = time.perf_counter()
        self.requests.put(request)  # blocks (I/O wait) only when the mover is 1024 requests behind
        self.io_wait += time.perf_counter() - t0

    # -- background thread ----------------------------------------------------------------
    def _move(self) -> None:
        while not self.stop_event.is_set():
            try:
                request = self.requests.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                if request is None:
                    return
                t0 = time.perf_counter()
                if request[0] == "write":
                    self._write(*request[1:])
                else:
                    _, slots, pos, versions = request
                    data = self._read(pos.cpu().numpy())
                    if data is not None:  # None: interrupted mid-read, nothing is applied
                        self.results.put((slots, pos, versions, data))
                self.io_seconds += time.perf_counter() - t0
            finally:
                self.requests.task_done()

    def _file(self, name: str, value: np.ndarray) -> np.memmap:
        if name not in self.files:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.files[name] = np.lib.format.open_memmap(
                self.dir / f"{name}.npy", mode="w+", dtype=value.dtype,
                shape=(self.storage_size, *value.shape[1:]))
        return self.files[name]

    def _write(self, pos: np.ndarray, fields: dict) -> None:
        keep = pos >= 0
        for name, value in fields.items():
            self._file(name, value)[pos[keep]] = value[keep]

    def _read(self, pos: np.ndarray) -> dict | None:
        data = {}
        for name, file in self.files.items():
            if self.stop_event.is_set():
                return None
            data[name] = np.array(file[pos])
        return data

    def flush(self) -> None:
        """Wait until the mover has done every disk write and read asked so far."""
        self._send_writes()
        if self.mover.is_alive():
            self.requests.join()
        for file in self.files.values():
            file.flush()

    def close(self) -> None:
        """Finish pending disk work and stop the mover."""
        self._send_writes()
        if self.mover.is_alive():
            self.requests.put(None)
            self.mover.join()
        self.flush()

    def interrupt(self) -> None:
        """Stop the mover now, even in the middle of a swap (which is then dropped)."""
        self.stop_event.set()
        self.mover.join()

    # -- reporting ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.em)

    @property
    def nbytes(self) -> int:
        return self.em.nbytes + self.stored_y.nbytes + self.version.nbytes

    def stats(self) -> dict:
        self.close()
        return {"memory_disk_bytes": sum(f.nbytes for f in self.files.values()),
                "memory_swaps": self.swaps, "memory_io_wait_seconds": self.io_wait,
                "memory_io_seconds": self.io_seconds, "memory_swap_seconds": self.swap_seconds,
                "memory_stored": int((self.stored_y >= 0).sum())}

    def state_dict(self) -> dict:
        self.flush()  # the store on disk is complete; the state points to it
        return {**super().state_dict(), "em": self.em.state_dict(), "seen": self.seen,
                "stored_y": self.stored_y, "version": self.version, "dir": str(self.dir)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.em.load_state_dict(state["em"])
        self.seen, self.stored_y, self.version = state["seen"], state["stored_y"], state["version"]
        self.dir = Path(state["dir"])
        self.files = {p.stem: np.load(p, mmap_mode="r+") for p in self.dir.glob("*.npy")}
        if not self.mover.is_alive():
            self.stop_event.clear()
            self.mover = threading.Thread(target=self._move, daemon=True, name="carousel-mover")
            self.mover.start()


def _first_occurrences(values: torch.Tensor):
    """Unique values and the index of the first occurrence of each."""
    uniq, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((len(uniq),), len(values), dtype=torch.long, device=values.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(values), device=values.device), "amin")
    return uniq, first
