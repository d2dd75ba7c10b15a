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

import errno
import linecache
import os
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
