"""Where clbench's config tree lives (`CONF_DIR`). A leaf: it imports nothing of clbench,
so the CLI, the config registry, `clbench-tune` and `clbench-pretrain` can all read it
without importing each other."""

from __future__ import annotations

from pathlib import Path


def _conf_dir() -> str:
    """The config tree: cl_bench/conf in an installed wheel (setup.py maps conf/ there),
    else conf/ at the top of the source checkout (editable install, PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return str(packaged if (packaged / "config.yaml").is_file() else package.parent / "conf")


CONF_DIR = _conf_dir()
