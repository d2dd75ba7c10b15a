"""Structured-config schemas of the replay-family methods and memories (issue 3).

Registered by `cl_bench.config.register_schemas` next to the core schemas.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.config import MethodConf, ReplayMethodConf


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


SCHEMAS = {
    "method": {"schema_der": DERConf, "schema_derpp": DERppConf, "schema_gdumb": GDumbConf},
    "memory": {},
}
