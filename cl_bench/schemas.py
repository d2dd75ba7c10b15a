"""The one registry of structured-config schemas.

A schema is a dataclass that sits next to the class it configures and registers itself
with `@schema(group, name)`; `cl_bench.config.register_schemas` imports the packages that
hold them and stores each as `schema/<group>/<name>` in Hydra's ConfigStore, where a
yaml under `conf/<group>/` extends it (`- /schema/<group>/<name>@_here_`). Hydra then
validates every composed config against it: a misspelled key or a value of the wrong
type fails at compose time, naming the key. This module imports nothing of clbench.
"""

from __future__ import annotations

from enum import Enum

SCHEMAS: dict[tuple[str, str], type] = {}


def schema(group: str, name: str):
    """Class decorator: register a dataclass as the schema `schema/<group>/<name>`."""

    def register(cls: type) -> type:
        SCHEMAS[(group, name)] = cls
        return cls

    return register


class Scenario(Enum):
    class_il = "class_il"
    task_il = "task_il"
    domain_il = "domain_il"
