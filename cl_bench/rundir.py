"""Run-directory housekeeping that keeps a failure readable: room for the last words on a
full disk, and no error file left from an earlier attempt of a run that then completed."""

from __future__ import annotations

import contextlib
from pathlib import Path

RESERVE = ".clbench-reserve"
RESERVE_BYTES = 512 * 1024  # summary.json/.csv and error.txt of a failed run fit in it


class SpaceReserve:
    """A file of `RESERVE_BYTES` in the run directory, held while the run trains and
    removed before the summary and error.txt are written at its end: on a disk that filled
    up during the run, its blocks are what those last writes use."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RESERVE

    def take(self) -> None:
        try:
            with open(self.path, "wb") as f:
                f.write(bytes(RESERVE_BYTES))  # written out, not sparse: the blocks are held
        except OSError:  # already no room: nothing to hold
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def drop_stale_error(run_dir: Path) -> None:
    """Removes error.txt of an earlier, failed or interrupted attempt of a run that has
    now completed (a resumed run)."""
    with contextlib.suppress(OSError):
        (Path(run_dir) / "error.txt").unlink(missing_ok=True)
