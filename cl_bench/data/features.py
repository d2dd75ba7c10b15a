"""Cached-features mode of the internal-replay protocol: a split benchmark whose inputs
are the 1024-d outputs of the frozen conv5 extractor, computed once and cached, so the
continual run is MLP-sized (van de Ven et al., 2020; Pawlak et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cl_bench.data.benchmarks import SplitBenchmarkConf, split_stream
from cl_bench.data.datasets import DATASETS
from cl_bench.data.stream import TaskStream
from cl_bench.data.transforms import Preprocess
from cl_bench.models.conv5 import CIFAR10_MEAN, CIFAR10_STD, conv5_extractor, load_conv5
from cl_bench.schemas import schema


@torch.no_grad()
def extract(extractor, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    prep = Preprocess(CIFAR10_MEAN, CIFAR10_STD, "cpu")  # the extractor's training inputs
    return torch.cat([extractor(prep(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def feature_stream(*, weights: str, root: str | Path | None = None, **kw) -> TaskStream:
    """`split_stream` of the same dataset with each image replaced by its conv5 features,
    shaped (1024, 1, 1) so the runner's preprocessing passes them through unchanged.
    Features are cached next to the dataset as `features_<weights sha>.pt`."""
    stream = split_stream(root=root, **kw)
    extractor = conv5_extractor().eval()
    digest = load_conv5(extractor, weights, key="benchmark.weights")
    cache = Path(root).expanduser() / DATASETS[kw["dataset"]].dir_name / f"features_{digest}.pt"
    if cache.is_file():
        feats = torch.load(cache)
    else:
        feats = [(extract(extractor, t.train_x), extract(extractor, t.test_x))
                 for t in stream.tasks]
        torch.save(feats, cache)
    # float16: the runner's `.float()` then copies, so its in-place normalisation never
    # touches the cache
    tasks = [replace(t, train_x=tr.half()[:, :, None, None], test_x=te.half()[:, :, None, None])
             for t, (tr, te) in zip(stream.tasks, feats, strict=True)]
    # mean 0, std 1/255: Preprocess computes x * 1 - 0, so features arrive as they are
    return replace(stream, tasks=tasks, input_shape=(1024, 1, 1), mean=(0.0,),
                   std=(1 / 255,))


@schema("benchmark", "features")
@dataclass
class FeatureBenchmarkConf(SplitBenchmarkConf):
    """A split benchmark on cached conv5 features."""
    _target_: str = "cl_bench.data.features.feature_stream"
    weights: str = "???"
