"""Files a method or plugin adds to the run directory beside the loggers' (figures,
per-task tables), written through one sink so that no part opens run files itself."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cl_bench.loggers.csv_logger import atomic_write


class Artifacts:
    """The run directory's sink for extra files: `write_csv` and `save_image` by file name
    (no folders). Without a run directory (a method built in Python) nothing is written;
    `enabled` says which, so a part can skip the work of drawing a figure."""

    def __init__(self, run_dir: str | Path | None = None):
        self.run_dir = None if run_dir is None else Path(run_dir)

    @property
    def enabled(self) -> bool:
        return self.run_dir is not None

    def _path(self, name: str) -> Path:
        if Path(name).name != name:
            raise ValueError(f"artifact name {name!r} must be a plain file name")
        return self.run_dir / name

    def write_csv(self, name: str, header: list[str], rows: list[list],
                  append: bool = False) -> None:
        """`name` with `header` and `rows`, atomically; `append=True` adds the rows to an
        existing file (the header only when it is new)."""
        if not self.enabled:
            return
        path = self._path(name)
        old = path.read_text() if append and path.is_file() else ""
        buf = io.StringIO()
        writer = csv.writer(buf)
        if not old:
            writer.writerow(header)
        writer.writerows(rows)
        atomic_write(path, old + buf.getvalue())

    def save_image(self, name: str, images, **kwargs) -> None:
        """A grid of `images` (torchvision's `save_image`, its keyword arguments)."""
        if not self.enabled:
            return
        from torchvision.utils import save_image

        save_image(images, self._path(name), **kwargs)
