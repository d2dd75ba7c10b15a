"""The one registry of structured-config schemas.

A schema is a dataclass that sits next to the class it configures and registers itself
with `@schema(group, name)`; `cl_bench.config.register_schemas` imports the packages that
hold them and stores each as `schema/<group>/<name>` in Hydra's ConfigStore, where a
yaml under `conf/<group>/` extends it (`- /schema/<group>/<name>@_here_`). Hydra then
validates every composed config against it: a misspelled key or a value of the wrong
type fails at compose time, naming the key.

A schema's field defaults are the one source of a part's defaults: the yaml states only
where an option deviates from them (each with a comment naming where the value comes
from), and the class takes them through `defaults_from`. This module imports nothing of
clbench.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
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


# schema keys that are not constructor arguments: Hydra's and the runner's
NOT_ARGUMENTS = frozenset({"_target_", "_partial_", "name"})


def schema_defaults(conf: type, skip: tuple[str, ...] = ()) -> dict:
    """The constructor arguments `conf` gives a default: every field but NOT_ARGUMENTS,
    `skip`, a mandatory one (`???`) and one whose default is an interpolation (`${...}`,
    which only a composed config resolves)."""
    out = {}
    for f in dataclasses.fields(conf):
        if f.name in NOT_ARGUMENTS or f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if value == "???" or (isinstance(value, str) and "${" in value):
            continue
        out[f.name] = value
    return out


def defaults_from(conf: type, skip: tuple[str, ...] = ()):
    """Class decorator: the constructor's arguments left out of a call take `conf`'s
    defaults (`schema_defaults`), so the schema is their one source and a part built in
    Python (`DERpp(model=..., optimizer=..., memory=..., ...)`) is the part the CLI builds
    from its option with no overrides. The constructor itself states no default for them.
    A subclass without its own `defaults_from` inherits its parent's."""

    def decorate(cls: type) -> type:
        init = cls.__init__
        params = list(inspect.signature(init).parameters.values())[1:]
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            given = set(positional[:len(args)]).union(kwargs)
            for key, value in schema_defaults(conf, skip).items():
                if key not in given:
                    kwargs[key] = value
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        cls.schema = conf
        return cls

    return decorate
