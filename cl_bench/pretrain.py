"""`clbench-pretrain`: makes (or finds) the cached self-pretrained weights of a model
config (`model.weights=pretrain`, see `cl_bench.weights`) before any run needs them."""

from __future__ import annotations

import json
import sys

from cl_bench import cli
from cl_bench.paths import CONF_DIR


def _pretrain_command(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from cl_bench.data.datasets import load_dataset
    from cl_bench.experiment import build_model, resolve_device
    from cl_bench.weights import self_pretrained

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "model.weights=pretrain"])
    device = resolve_device(str(getattr(cfg.device, "value", cfg.device)))
    shape = tuple(load_dataset(cfg.model.pretrain.dataset, cfg.data.root).train_x.shape[1:])
    _, info = self_pretrained(cfg.model, build=lambda n: build_model(cfg.model, shape, n),
                              data_root=cfg.data.root, cache_root=cfg.cache.root,
                              device=device)
    print(json.dumps(info, indent=1))


def main() -> None:
    """`clbench-pretrain model=<name> [model.* overrides] [data.root=..] [cache.root=..]`:
    makes (or finds) the cached self-pretrained weights that a run with the same model
    config loads with `model.weights=pretrain`."""
    cli.main(lambda: _pretrain_command(sys.argv[1:]), prog="clbench-pretrain")


if __name__ == "__main__":
    main()
