"""Load whole datasets as uint8 tensors (N, C, H, W) with int64 labels.

Sources, in order: an array archive `<root>/<DIR>/*.npz` (uint8 `train_x`, `test_x`
shaped (N, H, W[, C]) and integer `train_y`, `test_y`), then torchvision's own files
under `<root>` (downloaded first when `download=True`). The offline default
(`digits`) ships inside scikit-learn and needs no root at all.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from cl_bench.errors import DataError, UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """Raised when a dataset is neither on disk nor downloadable; says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    dir_name: str  # folder under the data root that may hold an .npz archive
    torchvision_class: str | None
    torchvision_folder: str | None  # where torchvision keeps its files under the root
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_classes: int  # labels are 0..n_classes-1


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", None, None, (0.3063,), (0.3783,), 10),
    "mnist": DatasetInfo("MNIST", "MNIST", "MNIST/raw", (0.1307,), (0.3081,), 10),
    "fmnist": DatasetInfo("FashionMNIST", "FashionMNIST", "FashionMNIST/raw", (0.2860,),
                          (0.3530,), 10),
    "cifar10": DatasetInfo("CIFAR10", "CIFAR10", "cifar-10-batches-py",
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": DatasetInfo("CIFAR100", "CIFAR100", "cifar-100-python",
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}


@dataclass
class ArrayDataset:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo


@lru_cache(maxsize=2)  # sweeps run many jobs in one process; tensors are never mutated
def load_dataset(name: str, root: str | Path | None, download: bool = False) -> ArrayDataset:
    if name not in DATASETS:
        raise ValueError(
            f"benchmark.dataset={name!r} is not a known dataset; choose one of {sorted(DATASETS)}"
        )
    info = DATASETS[name]
    if name == "digits":
        return _load_digits(info)
    root = Path(root).expanduser() if root else None
    if root is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} needs a data root: set data.root=PATH or the CLBENCH_DATA "
            "environment variable to the folder that holds "
            f"{info.dir_name}/ (torchvision's layout, or an .npz archive)"
        )
    archive = _find_archive(root / info.dir_name)
    if archive is not None:
        return _load_npz(archive, info)
    if name in IDX_FILES and all((root / info.torchvision_folder / f).is_file()
                                 for f in IDX_FILES[name].values()):
        return _load_idx(info, root / info.torchvision_folder, IDX_FILES[name])
    return _load_torchvision(name, info, root, download)


def _find_archive(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    preferred = folder / f"{folder.name.lower()}.npz"
    if preferred.is_file():
        return preferred
    archives = sorted(folder.glob("*.npz"))
    if len(archives) > 1:
        raise ValueError(
            f"several .npz archives in {folder}: {[a.name for a in archives]}; keep one, "
            f"or name the one to use {preferred.name}"
        )
    return archives[0] if archives else None


def _to_nchw(x: np.ndarray, source: Path | str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(f"{source}: images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{source}: images must be (N, H, W) or (N, H, W, C), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray, x: torch.Tensor, key: str, source: Path, info: DatasetInfo):
    """`y` as int64 after checking it: integers in 0..n_classes-1, one per image."""
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{source}: {key} holds {y.shape} labels for {len(x)} images; "
                        "it needs one label per image")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{source}: {key} must hold integer class labels, got {y.dtype}; "
                        "store them with .astype(np.int64)")
    if len(y) and (y.min() < 0 or y.max() >= info.n_classes):
        bad = y.min() if y.min() < 0 else y.max()
        raise DataError(f"{source}: {key} holds label {bad}, outside 0..{info.n_classes - 1} "
                        f"({info.dir_name} has {info.n_classes} classes)")
    absent = np.setdiff1d(np.arange(info.n_classes), y)
    if len(absent):  # else a split would blame benchmark.n_tasks for the classes it counts
        raise DataError(f"{source}: {key} has no image of class {absent[0]}"
                        + (f" ({len(absent)} classes missing)" if len(absent) > 1 else "")
                        + f"; {info.dir_name} has {info.n_classes} classes (0.."
                        f"{info.n_classes - 1}), each needs images in both splits: the file "
                        "is incomplete, write it again with every class")
    return torch.as_tensor(y, dtype=torch.int64)


NPZ_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _load_npz(path: Path, info: DatasetInfo) -> ArrayDataset:
    try:
        with np.load(path) as arrays:
            missing = {"train_x", "train_y", "test_x", "test_y"} - set(arrays.files)
            if missing:
                raise DataError(f"{path} lacks arrays {sorted(missing)}; see README 'Data'")
            raw = {k: arrays[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except DataError:
        raise
    except NPZ_READ_ERRORS as err:
        # np.load reads a file that is not a zip archive as a pickle, and refuses it
        why = "not a zip archive" if "pickled" in str(err) else f"{type(err).__name__}: {err}"
        raise DataError(f"{path} cannot be read as an .npz archive ({why}): it is corrupt "
                        "or truncated; write it again (np.savez) or remove it to use "
                        "torchvision's files") from err
    train_x, test_x = _to_nchw(raw["train_x"], path), _to_nchw(raw["test_x"], path)
    return ArrayDataset(
        train_x, _labels(raw["train_y"], train_x, "train_y", path, info),
        test_x, _labels(raw["test_y"], test_x, "test_y", path, info),
        info,
    )


# torchvision's uncompressed IDX files (MNIST layout), read without importing torchvision
# (~1.2 s of start-up); compressed or missing files go through torchvision
_MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
IDX_FILES = {"mnist": _MNIST_FILES, "fmnist": _MNIST_FILES}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of uint8 data (LeCun's MNIST format: magic 0 0 8 ndim, big-endian dims)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an IDX file of uint8 data (bad header); copy or "
                        "download it again")
    ndim = int(raw[3])
    dims = tuple(int(d) for d in raw[4 : 4 + 4 * ndim].view(">u4")) if len(raw) >= 4 + 4 * ndim \
        else ()
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if len(dims) != ndim or len(raw) != expected:
        raise DataError(f"{path} holds {len(raw)} bytes where its header promises {expected}: "
                        "the file is truncated or corrupt; copy or download it again")
    return raw[4 + 4 * ndim :].reshape(dims)


def _load_idx(info: DatasetInfo, folder: Path, files: dict[str, str]) -> ArrayDataset:
    raw = {k: _read_idx(folder / f) for k, f in files.items()}
    train_x, test_x = _to_nchw(raw["train_x"], folder), _to_nchw(raw["test_x"], folder)
    return ArrayDataset(
        train_x, _labels(raw["train_y"], train_x, "train_y", folder / files["train_y"], info),
        test_x, _labels(raw["test_y"], test_x, "test_y", folder / files["test_y"], info),
        info,
    )


def _load_torchvision(name: str, info: DatasetInfo, root: Path, download: bool) -> ArrayDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.torchvision_class)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, ValueError, EOFError, OSError) as err:
        folder = root / info.torchvision_folder
        message = str(err).lower()
        if ("not found" not in message and "download" not in message and folder.is_dir()
                and any(folder.iterdir())):  # the files are there but do not load
            raise DataError(
                f"dataset {name!r}: torchvision found its files in {folder} but cannot "
                f"read them ({err})" + _truncated_idx(folder)
                + "; a file is truncated or corrupt: copy or download it again"
            ) from err
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: looked for {root / info.dir_name}/*.npz and "
            f"torchvision's files in {root / info.torchvision_folder}"
            + (" (the download failed too)" if download else "")
            + ". Fix: point data.root (or CLBENCH_DATA) at the folder that holds them, "
            "or pass data.download=true where there is a network."
            f" ({err})"
        ) from err
    arrays = []
    for split in (train, test):
        data = split.data
        x = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        arrays += [_to_nchw(x, root / info.dir_name), torch.as_tensor(split.targets)]
    return ArrayDataset(*arrays, info=info)


def _truncated_idx(folder: Path) -> str:
    """', e.g. <file> holds N bytes where its header promises M' for the first IDX file
    (MNIST's format) in `folder` whose size does not match its header."""
    if not folder.is_dir():
        return ""
    for path in sorted(folder.iterdir()):
        try:
            with open(path, "rb") as f:
                head = f.read(4)
                if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 8:  # IDX, uint8 data
                    continue
                dims = np.frombuffer(f.read(4 * head[3]), dtype=">u4")
        except OSError:
            continue
        expected = 4 + 4 * head[3] + int(np.prod(dims, dtype=np.int64))
        if path.stat().st_size != expected:
            return (f", e.g. {path} holds {path.stat().st_size} bytes where its header "
                    f"promises {expected}")
    return ""


def _load_digits(info: DatasetInfo) -> ArrayDataset:
    """scikit-learn's 8x8 digits (1,797 images), a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test_mask[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    return ArrayDataset(
        _to_nchw(x[~test_mask], "digits"),
        torch.from_numpy(y[~test_mask]),
        _to_nchw(x[test_mask], "digits"),
        torch.from_numpy(y[test_mask]),
        info,
    )
