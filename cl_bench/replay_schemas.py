"""Structured-config schemas of the replay-family methods and memories (issue 3).

Registered by `cl_bench.config.register_schemas` next to the core schemas.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.config import ReplayMethodConf


@dataclass
class DERConf(ReplayMethodConf):
    alpha: float = 0.3  # weight of the logit-matching (MSE) term


@dataclass
class DERppConf(DERConf):
    beta: float = 0.5  # weight of the replayed-label CE term


SCHEMAS = {
    "method": {"schema_der": DERConf, "schema_derpp": DERppConf},
    "memory": {},
}
