"""Carousel memory: disk-backed store, background swaps, and an interrupted swap."""

import threading

import numpy as np
import torch

from cl_bench.data.batch import Batch
from cl_bench.memory.carousel import Carousel


def _stream(memory, n=300, batch=10):
    for start in range(0, n, batch):
        ids = torch.arange(start, start + batch)
        x = torch.stack([ids // 256, ids % 256], 1).to(torch.uint8).view(-1, 1, 1, 2)
        memory.add(Batch(x, ids % 5, torch.zeros_like(ids), {"logits": ids.float().view(-1, 1)}))


def _ids(x):
    return (x.flatten(1).long() * torch.tensor([256, 1])).sum(1)


def _check_consistent(memory, n_offered):
    em = memory.em
    ids = _ids(em.x[: em.count])
    assert ids.unique().numel() == em.count  # no duplicate in the working buffer
    assert torch.equal(em.y[: em.count], ids % 5)  # every slot holds a whole sample
    assert torch.equal(em.extra["logits"][: em.count, 0].long(), ids)
    stored = _ids(torch.as_tensor(np.array(memory.files["x"])))
    # the store holds every offered sample exactly once (it is large enough here)
    filled = memory.stored_y >= 0
    assert sorted(stored[filled].tolist()) == list(range(n_offered))
    assert torch.equal(memory.stored_y[filled], stored[filled] % 5)
    src = em.extra["src"][: em.count]
    assert torch.equal(stored[src], ids)  # the working buffer knows where each sample lives


def test_swaps_bring_stored_samples_in_without_duplicates(tmp_path):
    memory = Carousel(size=20, storage_size=1000, swap_ratio=1.0, swap_every=1,
                      run_dir=tmp_path, seed=0)
    _stream(memory)
    before = set(_ids(memory.em.x).tolist())
    for _ in range(30):
        memory.sample(10, "logits")
        memory.flush()
    memory.sample(10)
    assert memory.swaps > 20
    assert set(_ids(memory.em.x).tolist()) != before
    memory.flush()
    _check_consistent(memory, 300)
    stats = memory.stats()
    assert stats["memory_disk_bytes"] >= 1000 * (2 + 8 + 8 + 4)  # x, y, task, logits files
    assert stats["memory_stored"] == 300


def test_interrupting_the_mover_mid_swap_loses_and_duplicates_nothing(tmp_path):
    memory = Carousel(size=20, storage_size=1000, swap_ratio=1.0, swap_every=1,
                      run_dir=tmp_path, seed=1)
    _stream(memory)
    memory.flush()
    held = memory.em.x.clone(), memory.em.y.clone()
    reading, original = threading.Event(), memory._read

    def stuck_read(pos):  # reads part of the swap, then hangs until interrupted
        np.array(memory.files["x"][pos])
        reading.set()
        memory.stop_event.wait()
        return original(pos)

    memory._read = stuck_read
    memory.sample(10)
    assert reading.wait(5)
    memory.interrupt()
    memory.sample(10)  # applies whatever finished: nothing
    assert memory.swaps == 0
    assert torch.equal(memory.em.x, held[0]) and torch.equal(memory.em.y, held[1])
    _check_consistent(memory, 300)


def test_loss_aware_policy_swaps_out_the_lowest_loss_samples(tmp_path):
    memory = Carousel(size=20, storage_size=100, swap_ratio=0.5, swap_policy="loss_aware",
                      run_dir=tmp_path, seed=0)
    try:
        assert memory.wants_losses
        _stream(memory, n=60)
        memory.sample(10)
        # as if slots 0..11 were just replayed: slot s had loss 12 - s
        memory.update(torch.arange(12), loss=torch.arange(12, 0, -1).float())
        chosen = memory.slots_to_swap(torch.arange(5))  # five slots to swap out
        assert sorted(chosen.tolist()) == [7, 8, 9, 10, 11]  # the five lowest losses
        # slots 12..19 were not replayed since they came in: infinite loss, kept
        assert torch.isinf(memory.slot_loss[12:]).all()
    finally:
        memory.close()


def test_unknown_swap_policy_names_the_key(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="memory.swap_policy"):
        Carousel(size=4, storage_size=8, swap_policy="lru", run_dir=tmp_path)
