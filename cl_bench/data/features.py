"""Cached-features mode of the internal-replay protocol: a split benchmark whose inputs
are the 1024-d outputs of the frozen conv5 extractor, computed once and cached, so the
continual run is MLP-sized (van de Ven et al., 2020; Pawlak et al., 2022).

The cache holds the features of every image of the dataset, train and test, in the
dataset's own order, and lives under `cache.root` (never under the data root, which may
be read-only). Its file is named by the dataset, the weights' sha256 and a sha256 of the
loaded images and labels, so other weights or other data never read it; the split (class
order, number of tasks) is applied after reading, so no split can read a stale one."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cl_bench.data.benchmarks import (
    SplitBenchmarkConf,
    check_n_tasks,
    keep_classes,
    split_dataset,
)
from cl_bench.data.datasets import ArrayDataset, load_dataset
from cl_bench.data.stream import TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.models.conv5 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DEFAULT_WEIGHTS,
    conv5_extractor,
    load_conv5,
    weights_file,
)
from cl_bench.schemas import schema

CACHE_VERSION = 1  # bump when the extraction changes (preprocessing, dtype, layout)
FEATURES = 1024


@torch.no_grad()
def extract(extractor, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    prep = Preprocess(CIFAR10_MEAN, CIFAR10_STD, "cpu")  # the extractor's training inputs
    return torch.cat([extractor(prep(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def data_digest(data: ArrayDataset) -> str:
    """sha256 of the loaded dataset (images and labels of both splits, with their shapes
    and dtypes): the same tensors give the same digest whichever files they came from."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(memoryview(t.contiguous().numpy()).cast("B"))
    return h.hexdigest()


def cache_path(cache: str | Path, dataset: str, weights_sha: str, data_sha: str) -> Path:
    return (Path(cache).expanduser() / "features"
            / f"{dataset}_conv5-{weights_sha[:16]}_data-{data_sha[:16]}_v{CACHE_VERSION}.pt")


def _read(path: Path, data: ArrayDataset, weights_sha: str, data_sha: str):
    """The cached (train, test) features, or None when the file is absent or is not the
    cache of these weights and data (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # corrupt or truncated: rebuilt and replaced
        return None
    ok = (isinstance(saved, dict) and saved.get("weights_sha256") == weights_sha
          and saved.get("data_sha256") == data_sha
          and tuple(saved["train"].shape) == (len(data.train_y), FEATURES)
          and tuple(saved["test"].shape) == (len(data.test_y), FEATURES))
    return (saved["train"], saved["test"]) if ok else None


def _write(path: Path, payload: dict) -> None:
    """Writes `payload` to `path` atomically: a temporary file beside it, then a rename, so
    a concurrent or interrupted run never sees half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def feature_stream(*, weights: str | Path, cache: str, dataset: str, root: str | Path | None = None,
                   download: bool = False, **split) -> TaskStream:
    """`split_stream` of `dataset` with each image replaced by its conv5 features, shaped
    (1024, 1, 1) so the runner's preprocessing passes them through unchanged. The features
    are read from the cache under `cache` when there, else computed and cached there."""
    for key, default in (("normalize", "standard"), ("pad", 0)):
        if split.pop(key, default) != default:
            raise ValueError(f"benchmark.{key} does not apply to cached conv5 features (they "
                             f"are fed as extracted); drop benchmark.{key}")
    if root is not None:  # a missing extractor fails before the dataset is read
        weights_file(weights, "benchmark.weights")
    data = load_dataset(dataset, root, download)  # names data.root when it is unset
    classes = split.pop("classes", None)  # a bad split fails before the extraction
    check_n_tasks(split["n_tasks"], len(classes) if classes else data.info.n_classes, dataset)
    weights = weights_file(weights, "benchmark.weights")
    extractor = conv5_extractor().eval()
    weights_sha = load_conv5(extractor, weights, key="benchmark.weights")
    t0 = time.perf_counter()
    data_sha = data_digest(data)
    path = cache_path(cache, dataset, weights_sha, data_sha)
    feats = _read(path, data, weights_sha, data_sha)
    hit, cache_error = feats is not None, ""
    if feats is None:
        # float16: the runner's `.float()` then copies, so its in-place normalisation never
        # touches the cache
        feats = (extract(extractor, data.train_x).half(), extract(extractor, data.test_x).half())
        try:
            _write(path, {"train": feats[0], "test": feats[1], "weights_sha256": weights_sha,
                          "data_sha256": data_sha, "dataset": dataset,
                          "version": CACHE_VERSION})
        except OSError as err:  # the run goes on; the next one extracts again
            cache_error = (f"the conv5 features could not be cached in {path} ({err}); set "
                           "cache.root (or CLBENCH_CACHE) to a folder you can write")
    featured = replace(data, train_x=feats[0][:, :, None, None], test_x=feats[1][:, :, None, None])
    if classes is not None:
        featured = keep_classes(featured, list(classes))
    stream = split_dataset(featured, dataset=dataset, **split)
    provenance = {
        "extractor_weights": str(weights),
        "extractor_sha256": weights_sha,
        "features_cache": str(path),
        "features_cache_hit": hit,
        "features_seconds": time.perf_counter() - t0,
        "features_data_sha256": data_sha,
    }
    if cache_error:
        provenance["features_cache_error"] = cache_error
    # mean 0, std 1/255: Preprocess computes x * 1 - 0, so features arrive as they are
    return replace(stream, mean=(0.0,), std=(1 / 255,), provenance=provenance)


@schema("benchmark", "features")
@dataclass
class FeatureBenchmarkConf(SplitBenchmarkConf):
    """A split benchmark on cached conv5 features."""
    _target_: str = "cl_bench.data.features.feature_stream"
    weights: str = "${weights.root}/" + DEFAULT_WEIGHTS
    cache: str = "${cache.root}"
