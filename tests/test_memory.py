import torch

from cl_bench.data.batch import Batch
from cl_bench.memory.class_balanced import ClassBalanced, balanced_quotas
from cl_bench.memory.reservoir import Reservoir


def _stream_into(memory, n_items=1000, batch=10, n_classes=None):
    for b in range(0, n_items, batch):
        ids = torch.arange(b, b + batch)
        labels = ids % n_classes if n_classes else ids
        x = ids.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
        memory.add(Batch(x, labels, torch.zeros_like(ids)))


def test_reservoir_inclusion_probability_is_uniform():
    size, n_items, trials = 50, 1000, 400
    hits = torch.zeros(n_items)
    for trial in range(trials):
        memory = Reservoir(size, seed=trial)
        _stream_into(memory, n_items)
        held = memory.y[: len(memory)]
        assert len(memory) == size and held.unique().numel() == size  # no duplicates
        hits[held] += 1
    freq = hits / trials
    assert abs(freq.mean() - size / n_items) < 1e-6
    # every tenth of the stream (early and late items alike) is kept at rate 0.05
    per_decile = freq.view(10, -1).mean(1)
    assert (per_decile - 0.05).abs().max() < 0.006


def test_reservoir_stores_uint8_and_reports_bytes():
    memory = Reservoir(8, seed=0)
    _stream_into(memory, 30, batch=5)
    assert memory.x.dtype == torch.uint8 and memory.x.shape == (8, 1, 2, 2)
    assert memory.nbytes == 8 * 4 + 8 * 8 * 2  # uint8 images + int64 labels and task ids
    b = memory.sample(16)
    x, y = b.x, b.y
    # a sampled image is the one stored with its label
    assert torch.equal(x[:, 0, 0, 0].long(), y % 256)


def test_reservoir_keeps_everything_until_full():
    memory = Reservoir(100, seed=0)
    _stream_into(memory, 60)
    assert sorted(memory.y[:60].tolist()) == list(range(60))


def test_balanced_quotas_water_filling():
    assert balanced_quotas([10, 3, 10], 10, order=[0, 1, 2]) == [4, 3, 3]
    assert balanced_quotas([100, 100, 100], 10, order=[2, 1, 0]) == [3, 3, 4]
    assert balanced_quotas([2, 2], 10, order=[0, 1]) == [2, 2]


def test_class_balanced_gives_each_class_an_equal_share():
    memory = ClassBalanced(30, seed=0)
    gen = torch.Generator().manual_seed(0)
    for task in range(3):  # classes arrive two per task, as in a split benchmark
        for _ in range(20):
            y = torch.randint(2 * task, 2 * task + 2, (10,), generator=gen)
            x = torch.zeros(10, 1, 1, 1, dtype=torch.uint8)
            memory.add(Batch(x, y, torch.full((10,), task)))
        counts = torch.bincount(memory.y[: len(memory)]).tolist()
        assert len(memory) == 30
        assert max(counts) - min(counts) <= 1, counts
    assert torch.bincount(memory.y).tolist() == [5] * 6


def test_reservoir_state_dict_resumes_the_same_stream():
    a, b = Reservoir(20, seed=0), Reservoir(20, seed=5)
    _stream_into(a, 50)
    b.load_state_dict({k: v.clone() if torch.is_tensor(v) else v
                       for k, v in a.state_dict().items()})
    for memory in (a, b):
        for start in range(50, 90, 10):
            ids = torch.arange(start, start + 10)
            x = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
            memory.add(Batch(x, ids, torch.zeros_like(ids)))
    assert torch.equal(a.y, b.y) and torch.equal(a.sample(8).y, b.sample(8).y)
