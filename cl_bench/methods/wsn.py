"""WSN (Winning SubNetworks) and SoftNet: weights and task masks learned jointly."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.errors import ConfigError
from cl_bench.methods.supsup import SupermaskConf, SupermaskMethod
from cl_bench.schemas import defaults_from, schema


@schema("method", "wsn")
@dataclass
class WSNConf(SupermaskConf):
    weight_init: str = "keep"
    soft: float = 0.0    # SoftNet: non-mask weights enter at noise ~ U(0, soft)


@defaults_from(WSNConf)
class WSN(SupermaskMethod):
    """WSN (Kang et al., ICML 2022, "Forget-free Continual Learning with Winning
    Subnetworks"): the weights and one score per weight train together; a task's mask is
    the top `density` of |scores| per layer; weights an earlier task's mask uses get no
    gradient (frozen, reusable), so with task ids nothing is forgotten. The scores carry
    over from task to task (as in ihaeyong/WSN); the weights keep the model's own
    initialisation. `soft` > 0 is SoftNet (`SoftNet`)."""

    trains_weights = True

    def __init__(self, soft: float, **kw):
        if soft < 0:
            raise ConfigError(f"method.soft={soft} must be >= 0")
        self.soft = soft
        super().__init__(**kw)

    def before_task(self, task):
        self._free = [(~u).to(m.weight.dtype)
                      for m, u in zip(self.layers, self.used_masks(), strict=True)]
        super().before_task(task)
        for group in self.optimizer.param_groups:
            if group.get("weight_decay", 0):
                raise ConfigError(f"method={self.name} needs optimizer.weight_decay=0: decay "
                                  "would move the weights earlier tasks use")

    def after_backward(self, batch):
        for m, free in zip(self.layers, self._free, strict=True):
            if m.weight.grad is not None:
                m.weight.grad.mul_(free)


@schema("method", "softnet")
@dataclass
class SoftNetConf(WSNConf):
    soft: float = 0.1  # background noise scale U(0, soft); the paper leaves it to a setting


@defaults_from(SoftNetConf)
class SoftNet(WSN):
    """SoftNet (Kang et al., "Forget-free Continual Learning with Soft-Winning
    SubNetworks", 2023): WSN whose masks are non-binary, the binary mask m plus small noise
    on its background, m + (1 - m) * U(0, `soft`) (one fixed draw per layer, shared by the
    tasks; the paper leaves the noise's scale to a setting, U(0, 1) in its few-shot version).
    The background weights an old task reads may be trained by later tasks, so unlike WSN
    old-task outputs can drift (by about `soft` times the change of those weights)."""

    def __init__(self, soft: float, **kw):
        if soft <= 0:
            raise ConfigError(f"method.soft={soft} must be > 0 for softnet (0 is method=wsn)")
        super().__init__(soft=soft, **kw)

