"""Hydra entry point of `clbench`."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cl_bench.config import register_schemas
from cl_bench.identity import run_id

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
_PROCESS_UID = secrets.token_hex(3)  # makes run dirs of runs started in one second distinct

OmegaConf.register_new_resolver("clbench_uid", lambda: _PROCESS_UID, replace=True)
OmegaConf.register_new_resolver("clbench_run_id", lambda *, _root_: run_id(_root_), replace=True)
register_schemas()


def _terminate(signum, frame):
    from cl_bench.experiment import RunInterrupted

    raise RunInterrupted(f"signal {signum}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from cl_bench.experiment import run_experiment

    signal.signal(signal.SIGTERM, _terminate)
    summary = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    return summary[f"acc_{summary['scenario']}"]


if __name__ == "__main__":
    main()
