"""Progressive Latent Replay."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.methods.latent_replay import LatentReplay, LatentReplayConf
from cl_bench.schemas import defaults_from, schema

RULES = ("uniform", "cumulative_weights", "total_weights", "explicit")


def plr_frequencies(rule: str, param_counts: list[int],
                    explicit: list[float] | None = None) -> list[float]:
    """f_0 .. f_{L-1} (fraction of replay injected at each level) from the parameter
    counts w_k of layers h_{k+1}, by the rules of the PLR authors' code."""
    total, n = sum(param_counts), len(param_counts)
    if rule == "uniform":
        raw = [1.0] * n
    elif rule == "cumulative_weights":  # inversely proportional to the cost above level k
        raw = [total / sum(param_counts[k:]) for k in range(n)]
    elif rule == "total_weights":
        raw = [total / w for w in param_counts]
    elif rule == "explicit":
        if explicit is None or len(explicit) != n or min(explicit) < 0 \
                or abs(sum(explicit) - 1) > 1e-6:
            raise ValueError(f"method.frequencies={explicit} must be {n} non-negative numbers "
                             "summing to 1 (one per level a_0 .. a_{L-1})")
        raw = list(explicit)
    else:
        raise ValueError(f"method.rule={rule!r}: choose one of {list(RULES)}")
    return [r / sum(raw) for r in raw]


@schema("method", "plr")
@dataclass
class PLRConf(LatentReplayConf):
    rule: str = "cumulative_weights"  # uniform | cumulative_weights | total_weights | explicit
    frequencies: list[float] | None = None  # for rule=explicit: f_0 .. f_{L-1}
    generator_extra_layer: bool = True  # the authors' VAE shape (README: +12.7 points, seed 0)


@defaults_from(PLRConf)
class PLR(LatentReplay):
    """Progressive Latent Replay (Pawlak et al., 2022, "Progressive Latent Replay as
    Efficient Generative Rehearsal"): each replay minibatch is split by injection level
    with frequencies from `rule`, so layer h_l trains on replay from a fraction
    F_l = f_0 + ... + f_{l-1} of it, and the generator decodes each sample only down to
    its level. `partition=temporal` instead replays the whole batch at one level per
    step, level k on a fraction f_k of the steps."""

    def __init__(self, rule: str, frequencies: list[float] | None,
                 **kw):
        super().__init__(**kw)
        self.frequencies = plr_frequencies(rule, self.view.param_counts(),
                                           None if frequencies is None else list(frequencies))
