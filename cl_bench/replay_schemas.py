"""Structured-config schemas of the replay-family methods and memories (issue 3).

Registered by `cl_bench.config.register_schemas` next to the core schemas, each as
`schema/<group>/<kind>` (a yaml extends it with `- /schema/<group>/<kind>@_here_`), so they
do not show up as options of the groups they describe.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from cl_bench.config import MemoryConf, MethodConf, ReplayMethodConf


@dataclass
class DERConf(ReplayMethodConf):
    alpha: float = 0.3  # weight of the logit-matching (MSE) term


@dataclass
class DERppConf(DERConf):
    beta: float = 0.5  # weight of the replayed-label CE term


@dataclass
class GDumbConf(MethodConf):
    epochs: int = 30  # epochs of retraining from scratch on the memory before each evaluation
    batch_size: int = 32


@dataclass
class CoresetConf(MemoryConf):
    pool_size: int = 200  # reservoir of candidates from the current task
    ridge: float = 0.5  # ridge term of the OMP least squares


@dataclass
class CarouselConf(MemoryConf):
    storage_size: int = 5000  # samples in the store on disk
    swap_ratio: float = 0.5  # share of each replayed batch swapped with stored samples
    swap_every: int = 16  # samplings between batched hand-overs of writes and swaps to the mover
    swap_policy: str = "random"  # random | loss_aware (swap out the lowest-loss samples)


SCHEMAS = {
    "method": {"method": MethodConf, "replay": ReplayMethodConf, "der": DERConf,
               "derpp": DERppConf, "gdumb": GDumbConf, "gcr": DERppConf},
    "memory": {"memory": MemoryConf, "coreset": CoresetConf, "carousel": CarouselConf},
}


def register(cs: ConfigStore) -> None:
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
