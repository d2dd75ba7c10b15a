"""Checkpoints: everything needed to continue a run after its last completed task
(`checkpoint.pt`), or from a step inside the task after it (`checkpoint_step.pt`)."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from cl_bench.errors import writing

CHECKPOINT = "checkpoint.pt"
IN_TASK = "checkpoint_step.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict, name: str = CHECKPOINT) -> None:
    """Writes `name` (`checkpoint.pt`) atomically; a failed write (a full disk) leaves the previous
    checkpoint as it was and no temporary file behind, and is reported as one DiskFull
    naming the folder and the checkpoint's size."""
    tmp = run_dir / f".{name}.tmp"
    with writing(run_dir / name, lambda: _size(state)):
        try:
            torch.save(state, tmp)
            os.replace(tmp, run_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _size(state: dict) -> int:
    """Bytes `state` takes as a checkpoint file (asked only after a failed write)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


class CorruptCheckpoint(Exception):
    """checkpoint.pt exists but cannot be read (truncated, overwritten, not a checkpoint)."""


def load_checkpoint(run_dir: Path, name: str = CHECKPOINT) -> dict | None:
    """The state saved in `run_dir` (file `name`), or None when there is none. A file that does not
    load is moved aside to `checkpoint.pt.corrupt` and reported as CorruptCheckpoint, so
    the caller can start over and a later call does not trip on it again."""
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "task" not in state:
            raise ValueError("not a clbench checkpoint")
        return state
    except Exception as err:
        os.replace(path, run_dir / f"{name}.corrupt")
        raise CorruptCheckpoint(f"{path} is corrupt ({type(err).__name__}: {err}); moved "
                                f"it to {name}.corrupt") from err
