"""Reading weight files named by a config key (`model.weights=PATH`, `benchmark.weights`,
the self-pretrained cache): a file that does not load is one DamagedFile message naming
the key, the path, what the file should hold and how to make it again, never a
deserialiser's traceback. Nothing here unpickles: torch files load with weights_only."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from cl_bench.errors import DamagedFile, damaged

STATE_DICT = "a state dict saved with torch.save (or a .safetensors file)"
CONV5 = ("a conv5 extractor .npz (arrays conv1.weight, conv1.bn_weight, ... as "
         "scripts/pretrain_extractor.py writes them)")


def conv5_rebuild(path) -> str:
    return (f"run `python scripts/pretrain_extractor.py --out {path}` (trains the extractor on "
            "the CIFAR-10 under data.root) or point the key at a good copy")


def read_state(path: Path, key: str, rebuild: str) -> dict:
    """The tensors of a `.pt`/`.pth` (torch.save, weights only) or `.safetensors` file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip, header, JSON, truncation: all a bad file
        raise damaged(key, path, STATE_DICT, rebuild, err) from err
    if not isinstance(state, dict):
        raise DamagedFile(f"{key}={path} holds a {type(state).__name__}, not {STATE_DICT}. "
                          f"Fix: {rebuild}")
    return state


def read_npz(path: Path, key: str, names: list[str], expected: str, rebuild: str) -> dict:
    """The arrays `names` of an `.npz` file."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [n for n in names if n not in arrays.files]
            if missing:
                raise KeyError(f"no array {missing[0]}")
            return {n: arrays[n] for n in names}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise damaged(key, path, expected, rebuild, err) from err
