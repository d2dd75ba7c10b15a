"""Memory policies of issue 3 (ring, herding) and iCaRL's nearest-mean classifier."""

import pytest
import torch
from torch import nn

from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.memory.coreset import Coreset, nonneg_omp
from cl_bench.memory.herding import Herding, herding_order
from cl_bench.memory.ring import Ring
from cl_bench.methods.icarl import ICaRL


def test_ring_keeps_the_last_k_per_class():
    memory = Ring(6, seed=0)
    for start in range(0, 40, 4):  # ids 0..39, class = id % 2 for ids < 20, then 2
        ids = torch.arange(start, start + 4)
        labels = torch.where(ids < 20, ids % 2, torch.full_like(ids, 2))
        memory.add(Batch(ids.view(-1, 1, 1, 1).to(torch.uint8), labels, torch.zeros_like(ids)))
    kept = memory.x[: len(memory)].flatten().long()
    # 3 classes seen, 2 slots each: the last two ids of each class
    assert sorted(kept.tolist()) == [16, 17, 18, 19, 38, 39]
    assert torch.equal(memory.y[: len(memory)].sort().values, torch.tensor([0, 0, 1, 1, 2, 2]))


def test_herding_follows_the_running_class_mean():
    # unit vectors, so L2 normalisation leaves them as they are; mean = (0.28, 0.24)
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [0.8, -0.6]])
    # k=1: squared distances to the mean 0.576, 0.656, 1.696, 0.416, 0.976 -> point 3
    # k=2: mean of {3, j}: j=0 0.296, j=1 0.436, j=2 0.256, j=4 0.196 -> point 4
    # k=3: with {3, 4}: j=0 0.300, j=1 0.0605, j=2 0.0516 -> point 2; k=4: j=0 0.041, j=1 0.036
    assert herding_order(points, 5).tolist() == [3, 4, 2, 1, 0]
    assert herding_order(points * 7.0, 2).tolist() == [3, 4]  # scale-free


def test_herding_memory_gives_each_class_its_share_in_herding_order():
    memory = Herding(4, seed=0)
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [0.8, -0.6]])
    x = torch.arange(5, dtype=torch.uint8).view(-1, 1, 1, 1)
    memory.select(Batch(x, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)),
                  points)
    assert memory.x.flatten().tolist() == [3, 4, 2, 1]  # one class: all 4 slots, herded
    memory.select(Batch(x + 10, torch.ones(5, dtype=torch.long), torch.ones(5, dtype=torch.long)),
                  points)
    # two classes: 2 each; class 0 drops the tail of its herding order
    assert sorted(memory.x.flatten().tolist()) == [3, 4, 13, 14]


class Identity(nn.Module):
    """Features = the raw (flattened) input; a linear head that NME ignores."""

    def __init__(self):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(2, 4)

    def forward(self, x):
        return self.head(self.features(x))


def test_icarl_nme_is_exact_on_separable_data():
    gen = torch.Generator().manual_seed(0)
    # features are L2-normalised, so classes are told apart by direction: ~5, 24, 45, 85 deg
    centres = torch.tensor([[220.0, 20.0], [200.0, 90.0], [150.0, 150.0], [20.0, 220.0]])
    y = torch.arange(4).repeat_interleave(50)
    x = (centres[y] + torch.randint(-15, 16, (200, 2), generator=gen)).to(torch.uint8)
    x = x.view(-1, 1, 1, 2)
    memory = Herding(40, seed=0)
    method = ICaRL(model=Identity(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                   memory=memory, preprocess=Preprocess((0.0,), (1.0,), "cpu"),
                   class_mask=torch.ones(1, 4, dtype=torch.bool), scenario="class_il")
    memory.select(Batch(x, y, torch.zeros_like(y)), x.flatten(1).float())
    method.update_prototypes()
    # prototypes are the normalised means of the exemplars' normalised features
    for c in range(4):
        ex = nn.functional.normalize(memory.x[memory.y == c].flatten(1).float() / 255, dim=1)
        assert torch.allclose(method.prototypes[c],
                              nn.functional.normalize(ex.mean(0), dim=0), atol=1e-6)
    with torch.no_grad():
        pred = method.predict(method.preprocess(x)).argmax(1)
    assert torch.equal(pred, y)


def _embed(rows):  # a fixed "gradient" per sample: its pixel values and label
    return torch.cat([rows["x"].flatten(1).float(), rows["y"].unsqueeze(1).float()], 1)


def test_coreset_weights_are_positive_and_sum_to_the_samples_represented():
    gen = torch.Generator().manual_seed(0)
    memory = Coreset(size=40, pool_size=60, seed=0)
    seen = torch.zeros(4)
    for task in range(2):
        for _ in range(20):  # 200 samples per task, classes 2t and 2t+1 (unbalanced)
            y = 2 * task + (torch.rand(10, generator=gen) < 0.3).long()
            x = torch.randint(0, 255, (10, 1, 2, 2), generator=gen, dtype=torch.uint8)
            logits = torch.randn(10, 4, generator=gen)
            memory.add(Batch(x, y, torch.full((10,), task), {"logits": logits}))
            seen += torch.bincount(y, minlength=4)
        memory.consolidate(_embed, n_tasks=task + 1)
        w, y = memory.rows["weight"], memory.rows["y"]
        assert (w > 0).all()
        for c in range(2 * task + 2):  # each class's weights: the samples of it seen
            assert w[y == c].sum().item() == pytest.approx(seen[c].item(), rel=1e-5)
        # re-selection keeps size // tasks per task
        assert torch.bincount(memory.rows["task"]).tolist() == [40 // (task + 1)] * (task + 1)
    b = memory.sample(16, "logits", "weight")
    x, y, z, w = b.x, b.y, b.logits, b.weight
    assert x.dtype == torch.uint8 and z.shape == (16, 4) and (w > 0).all()


def test_coreset_matches_the_gradient_better_than_a_random_subset():
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(200, 8, generator=gen).double() + 0.5
    target = grads.sum(0)
    cols, w = nonneg_omp(grads.T, target, 10, ridge=0.0)
    coreset_err = ((grads[cols].T @ w) - target).norm() / target.norm()
    rand = torch.randperm(200, generator=gen)[:10]
    random_err = ((grads[rand].sum(0) * 20) - target).norm() / target.norm()
    assert (w > 0).all() and len(cols) <= 10
    assert coreset_err < random_err / 2


def test_nonneg_omp_without_ridge_tolerates_dependent_columns():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(4, 6, generator=gen).double()  # 14 columns in 4 dimensions, duplicates
    a = torch.cat([base, base, base[:, :2] + base[:, 2:4]], 1)
    b = a[:, :3] @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.double)
    cols, w = nonneg_omp(a, b, 12, ridge=0.0)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert len(cols) <= 4  # stops once b is matched instead of adding dependent columns
    assert ((a[:, cols] @ w) - b).norm() < 1e-8 * b.norm()
