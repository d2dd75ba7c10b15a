"""User errors: what `clbench` reports as one short message instead of a traceback.

A user error is bad input or an unusable environment, not a bug: a config value that
makes no sense, a missing or corrupt data file, a device torch does not have, an output
folder that cannot be written. Its message names the config key or the file and the fix.
`clbench` (cl_bench/cli.py) prints that message alone and exits non-zero; the traceback
still goes to the run's `error.txt`, and to the terminal with HYDRA_FULL_ERROR=1.

Raise `ConfigError` (a ValueError) for a bad value. Every ValueError, FileNotFoundError,
RuntimeError or ArithmeticError that clbench's own code raises explicitly (a `raise`
statement in cl_bench/) counts as a user error too, so the parts keep raising plain
ValueErrors (the project's convention); one raised inside torch or by a bug in our code
(`zip(strict=True)`, unpacking) does not, and shows its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import linecache
import os
import shutil
from collections.abc import Callable
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent) + os.sep
EXPLICIT_TYPES = (ValueError, FileNotFoundError, RuntimeError, ArithmeticError)


class UserError(Exception):
    """Marker base of the errors a user can fix from the message alone."""


class ConfigError(UserError, ValueError):
    """A config value that makes no sense; the message names the key and the fix."""


class DataError(UserError, ValueError):
    """A data file that cannot be used as it is (corrupt, truncated, bad labels); the
    message names the file."""


def _raised_by_clbench(err: BaseException) -> bool:
    """True when the innermost frame is a `raise` statement in cl_bench's own code."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not os.path.abspath(filename).startswith(_PACKAGE):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def user_error(err: BaseException) -> BaseException | None:
    """The user error that `err` is or wraps (Hydra's InstantiationException wraps what a
    part's constructor raised), or None when `err` looks like a bug."""
    from hydra.errors import InstantiationException

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UserError):
            return err
        if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
            return err
        if isinstance(err, EXPLICIT_TYPES) and _raised_by_clbench(err):
            return err
        if not isinstance(err, InstantiationException):
            return None
        err = err.__cause__
    return None


# OS errors that say something about the machine or the paths given, not about the code
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                      errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
                      errno.EMFILE, errno.ENFILE, errno.EIO}


def describe(err: BaseException) -> str:
    """`err` as one line for the user: an OS error as 'what: path', else its message."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    return str(err) or type(err).__name__


class DamagedFile(UserError, ValueError):
    """A weights (or other binary) file named by a config key that does not load: the
    message names the key, the path, what the file should hold and how to make it again."""


def damaged(key: str, path, expected: str, rebuild: str, err: BaseException) -> DamagedFile:
    """The DamagedFile for `key`=`path` that failed to load with `err` (the loader's own
    text is kept short: torch's advice to load with weights_only=False is dropped, since a
    tool must not unpickle a file it did not make)."""
    why = str(err).split("\n")[0].strip() or type(err).__name__
    why = why.split(" (1) In PyTorch 2.6")[0].split("Weights only load failed")[0].strip()
    why = f"{type(err).__name__}: {why}" if why else type(err).__name__
    where = f"{key} {path}" if "=" in key else f"{key}={path}"
    return DamagedFile(f"{where} cannot be read ({why[:160]}): it is damaged or is not "
                       f"{expected}. Fix: {rebuild}")


class DiskFull(UserError, OSError):
    """No space left where the run writes: names the directory and the bytes needed."""

    def __init__(self, path, needed: int | None, free: int | None):
        folder = Path(path).parent
        need = f"{needed:,} bytes" if needed is not None else "more space"
        has = f" ({free:,} bytes free)" if free is not None else ""
        super().__init__(errno.ENOSPC, f"no space left on device in {folder}: writing "
                         f"{Path(path).name} needs {need}{has}. The files written before are "
                         "intact; free space there (or set output_root to another disk) and "
                         "rerun with skip_done=true to resume from the last completed task")

    def __str__(self) -> str:
        return self.strerror


def free_bytes(folder) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _asked(needed) -> int | None:
    try:
        return needed() if callable(needed) else needed
    except Exception:
        return None


@contextlib.contextmanager
def writing(path, needed: Callable[[], int] | int | None = None):
    """Turns a full disk while writing `path` into one DiskFull naming its folder and the
    bytes needed (`needed`, or a callable that says, asked only on failure): ENOSPC or
    EDQUOT, or torch's writer failing ("unexpected pos", "write failed": a RuntimeError)
    where the folder has less space than the file needs."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(path, _asked(needed), free_bytes(Path(path).parent)) from err
    except RuntimeError as err:
        if "unexpected pos" not in str(err) and "write failed" not in str(err):
            raise
        size, free = _asked(needed), free_bytes(Path(path).parent)
        if size is None or free is None or free >= size:
            raise
        raise DiskFull(path, size, free) from err
