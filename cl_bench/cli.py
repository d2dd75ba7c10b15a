"""Hydra entry point of `clbench`."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import textwrap
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_bench.config import register_schemas
from cl_bench.identity import run_id


def _conf_dir() -> str:
    """The config tree: cl_bench/conf in an installed wheel (setup.py maps conf/ there),
    else conf/ at the top of the source checkout (editable install, PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return str(packaged if (packaged / "config.yaml").is_file() else package.parent / "conf")


CONF_DIR = _conf_dir()
_PROCESS_UID = secrets.token_hex(3)  # makes run dirs of runs started in one second distinct


def option_groups(choices=None) -> str:
    """`clbench --help`'s list of the groups under conf/ and their options (the schemas
    registered in Hydra's ConfigStore are not choices), `*` on the ones in `choices`."""
    root, lines = Path(CONF_DIR), []
    groups = sorted({p.parent.relative_to(root).as_posix() for p in root.glob("*/**/*.yaml")})
    for group in (g for g in groups if g != "hydra/help"):
        chosen = (choices or {}).get(group)  # Hydra records none for a list-valued group
        options = [p.stem + "*" * (p.stem == chosen) for p in sorted(root.glob(f"{group}/*.yaml"))]
        lines.append(textwrap.fill(", ".join(options), width=96, initial_indent=f"{group}: ",
                                   subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(lines)


OmegaConf.register_new_resolver("clbench_uid", lambda: _PROCESS_UID, replace=True)
OmegaConf.register_new_resolver("clbench_run_id", lambda *, _root_: run_id(_root_), replace=True)
OmegaConf.register_new_resolver(
    "clbench_groups", lambda *, _root_: option_groups(_root_.hydra.runtime.choices), replace=True)
register_schemas()


def _terminate(signum, frame):
    from cl_bench.experiment import RunInterrupted

    raise RunInterrupted(f"signal {signum}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _run(cfg: DictConfig) -> float:
    from cl_bench.experiment import run_experiment

    signal.signal(signal.SIGTERM, _terminate)
    summary = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    return summary[f"acc_{summary['scenario']}"]


def main() -> None:
    """The `clbench` command. Hydra reports a bad override in a run in a few lines, but
    raises it under --help; this reports it the same way there."""
    try:
        _run()
    except CompactHydraException as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause = f"\n{err.__cause__}" if isinstance(err.__cause__, OmegaConfBaseException) else ""
        sys.exit(f"{err}{cause}")


if __name__ == "__main__":
    main()
