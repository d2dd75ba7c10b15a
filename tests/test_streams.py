import numpy as np
import pytest
import torch

from cl_bench.data.benchmarks import permuted_stream, split_stream
from cl_bench.data.datasets import DatasetNotFoundError
from conftest import data_root, needs_mnist

# per-class counts of the official MNIST files (shared/data/README.md)
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_digits_stream_is_offline_and_split_in_pairs():
    stream = split_stream(name="digits", dataset="digits", n_tasks=5)
    assert len(stream) == 5 and stream.n_classes == 10 and stream.input_shape == (1, 8, 8)
    assert stream.scenarios == ("class_il", "task_il")
    seen = set()
    for t, task in enumerate(stream):
        assert task.classes == [2 * t, 2 * t + 1]
        assert set(task.train_y.unique().tolist()) == set(task.classes)
        assert set(task.test_y.unique().tolist()) == set(task.classes)
        assert not seen & set(task.classes)
        seen |= set(task.classes)
        assert task.train_x.dtype == torch.uint8
    assert sum(len(t.train_y) for t in stream) == 1442
    assert sum(len(t.test_y) for t in stream) == 355


@needs_mnist
def test_split_mnist_counts():
    stream = split_stream(name="split_mnist", dataset="mnist", n_tasks=5, root=data_root())
    for t, task in enumerate(stream):
        assert len(task.train_y) == MNIST_TRAIN[2 * t] + MNIST_TRAIN[2 * t + 1]
        assert len(task.test_y) == MNIST_TEST[2 * t] + MNIST_TEST[2 * t + 1]
        assert task.train_x.shape[1:] == (1, 28, 28)


@needs_mnist
def test_class_order_remaps_labels_to_task_slots():
    order = list(range(9, -1, -1))
    stream = split_stream(name="s", dataset="mnist", n_tasks=5, class_order=order,
                          root=data_root())
    first = stream.tasks[0]
    # original classes 9 and 8 become labels 0 and 1 of task 0
    assert first.classes == [0, 1]
    assert (first.train_y == 0).sum() == MNIST_TRAIN[9]
    assert (first.train_y == 1).sum() == MNIST_TRAIN[8]
    assert stream.class_order == order


def test_shuffled_class_order_is_seeded():
    a = split_stream(name="d", dataset="digits", n_tasks=5, shuffle_classes=True, class_seed=3)
    b = split_stream(name="d", dataset="digits", n_tasks=5, shuffle_classes=True, class_seed=3)
    c = split_stream(name="d", dataset="digits", n_tasks=5, shuffle_classes=True, class_seed=4)
    assert a.class_order == b.class_order != c.class_order
    assert sorted(a.class_order) == list(range(10))
    assert torch.equal(a.tasks[0].train_x, b.tasks[0].train_x)


def test_bad_task_split_names_the_key():
    with pytest.raises(ValueError, match="benchmark.n_tasks=3"):
        split_stream(name="d", dataset="digits", n_tasks=3)


@needs_mnist
def test_permuted_mnist_is_domain_il_with_distinct_permutations():
    stream = permuted_stream(name="p", dataset="mnist", n_tasks=3, root=data_root())
    assert stream.scenarios == ("domain_il",) and len(stream) == 3
    t0, t1 = stream.tasks[0], stream.tasks[1]
    assert len(t0.train_y) == 60000 and torch.equal(t0.train_y, t1.train_y)
    # same pixels, different positions
    img0, img1 = t0.train_x[0].flatten(), t1.train_x[0].flatten()
    assert torch.equal(img0.sort().values, img1.sort().values)
    assert not torch.equal(img0, img1)


@needs_mnist
def test_permuted_mnist_per_task_labels_give_disjoint_classes():
    stream = permuted_stream(name="p", dataset="mnist", n_tasks=3, labels="per_task",
                             root=data_root())
    assert stream.scenarios == ("class_il", "task_il") and stream.n_classes == 30
    shared = permuted_stream(name="p", dataset="mnist", n_tasks=3, root=data_root())
    for t, (task, base) in enumerate(zip(stream, shared, strict=True)):
        assert task.classes == list(range(10 * t, 10 * t + 10))
        assert torch.equal(task.train_y, base.train_y + 10 * t)
        assert torch.equal(task.test_y, base.test_y + 10 * t)
        assert torch.equal(task.train_x, base.train_x)
    mask = stream.class_mask()
    assert mask.sum(1).tolist() == [10, 10, 10] and (mask.sum(0) == 1).all()
    with pytest.raises(ValueError, match="benchmark.labels='split'"):
        permuted_stream(name="p", dataset="mnist", n_tasks=3, labels="split", root=data_root())


def _write_npz(folder, n_classes, shape, n_per_class=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8)
    np.savez(folder / f"{folder.name.lower()}.npz", train_x=x, train_y=y, test_x=x[::2],
             test_y=y[::2])
    return x


@pytest.mark.parametrize("n_tasks,per_task", [(10, 10), (20, 5)])
def test_cifar100_from_npz_archive(tmp_path, n_tasks, per_task):
    x = _write_npz(tmp_path / "CIFAR100", 100, (32, 32, 3))
    stream = split_stream(name="c", dataset="cifar100", n_tasks=n_tasks, root=tmp_path)
    assert len(stream) == n_tasks and stream.input_shape == (3, 32, 32)
    assert all(len(t.classes) == per_task for t in stream)
    # NHWC archive -> NCHW tensors: pixel (row 1, col 2) of channel 2 of the first image
    assert stream.tasks[0].train_x[0, 2, 1, 2] == x[0, 1, 2, 2]


def test_missing_dataset_error_names_dataset_folder_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        split_stream(name="c", dataset="cifar10", n_tasks=5, root=tmp_path)
    message = str(err.value)
    assert "cifar10" in message and str(tmp_path) in message and "data.root" in message


@needs_mnist
@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_idx_files_read_without_torchvision_match_torchvision(name):
    from cl_bench.data import datasets

    info = datasets.DATASETS[name]
    root = data_root()
    ours = datasets._load_idx(info, root / info.torchvision_folder, datasets.IDX_FILES[name])
    theirs = datasets._load_torchvision(name, info, root, download=False)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(ours, key), getattr(theirs, key)), key
    assert ours.train_x.shape == (60000, 1, 28, 28) and ours.train_y.dtype == torch.int64


def test_truncated_idx_file_names_the_file(tmp_path):
    from cl_bench.data.datasets import DataError, _read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    header = bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">u4").tobytes()
    path.write_bytes(header + bytes(2 * 28 * 28))
    assert _read_idx(path).shape == (2, 28, 28)
    path.write_bytes(header + bytes(28 * 28))
    with pytest.raises(DataError, match=f"{path}.*truncated"):
        _read_idx(path)
