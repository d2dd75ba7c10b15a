"""Prompts around a frozen `ViT` (cl_bench/models/vit.py): the trainable parts of L2P,
DualPrompt and CODA-Prompt. Each wrapper holds the frozen backbone (only its head trains)
and returns, for a preprocessed batch, the logits and the mean key-query distance its
method pulls down; the query is the frozen model's [CLS] output, an extra forward pass
without prompts and without gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import register_flops
from cl_bench.errors import ConfigError


def _uniform(*shape) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-1, 1))


class Prompted(nn.Module):
    """A frozen ViT and the prompts a subclass adds; `forward(x)` gives the logits (the
    runner's calls), `run(x, task)` also the pull term and the chosen prompt ids."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        if not all(hasattr(vit, a) for a in ("tokens", "encode", "blocks", "head")):
            raise ConfigError(f"prompt methods need a ViT that takes prompts, got model "
                              f"{type(vit).__name__}: run them with model=vit (README "
                              f"\"Pretrained backbones\")")
        self.vit = vit.requires_grad_(False)
        vit.head.requires_grad_(True)
        self.chosen: torch.Tensor | None = None  # prompt (or task) ids of the last batch

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.features(x)

    def forward(self, x):
        return self.run(x)[0]

    def run(self, x, task: torch.Tensor | None = None):
        raise NotImplementedError


def _layers(layers, depth: int, key: str) -> list[int]:
    layers = list(layers)
    if any(not 0 <= i < depth for i in layers):
        raise ConfigError(f"method.{key}={layers}: the ViT has blocks 0..{depth - 1}")
    return layers


class L2PPrompts(Prompted):
    """L2P's pool (Wang et al., CVPR 2022): `pool` prompts of `length` tokens with keys; the
    `top_n` keys nearest (cosine) to the query pick the prompts prepended to the patch
    tokens (after [CLS]); the head reads the mean of the prompt tokens' outputs.
    `batchwise`: the released config's batch-level vote (the `top_n` ids most often chosen
    in the batch serve every sample, so a test prediction depends on its batch)."""

    def __init__(self, vit, pool: int = 10, length: int = 5, top_n: int = 4,
                 batchwise: bool = False):
        super().__init__(vit)
        if not 1 <= top_n <= pool or length < 1:
            raise ConfigError(f"method.top_n={top_n} must be in 1..method.pool={pool} and "
                              f"method.length={length} >= 1")
        self.top_n, self.batchwise = top_n, batchwise
        self.prompts = _uniform(pool, length, vit.dim)
        self.keys = _uniform(pool, vit.dim)

    def run(self, x, task=None):
        q = F.normalize(self.query(x), dim=1)
        sim = q @ F.normalize(self.keys, dim=1).T  # (B, pool)
        ids = sim.topk(self.top_n, dim=1).indices
        if self.batchwise:
            counts = torch.bincount(ids.flatten(), minlength=len(self.keys))
            ids = counts.topk(self.top_n).indices.expand(len(x), -1)
        self.chosen = ids
        pull = (1 - sim.gather(1, ids)).sum(1).mean()  # the reference's -sum(sim) / B, + top_n
        prompts = self.prompts[ids].flatten(1, 2)  # (B, top_n * length, dim)
        z = self.vit.tokens(x)
        z = self.vit.encode(torch.cat([z[:, :1], prompts, z[:, 1:]], 1))
        return self.vit.head(z[:, 1:1 + prompts.shape[1]].mean(1)), pull


class DualPrompts(Prompted):
    """DualPrompt (Wang et al., ECCV 2022): a task-shared G-prompt prefix-tuned into
    `g_layers` and one E-prompt per task (with a key) into `e_layers`. Training uses the
    sample's own task's E-prompt and pulls its key to the query; at test the E-prompt is
    the one whose key is nearest the query, among the tasks learned so far (the ids go to
    `chosen`, scored against the true tasks as `task_select_acc`). Head on [CLS]."""

    def __init__(self, vit, n_tasks: int, g_layers=(0, 1), g_length: int = 5,
                 e_layers=(2, 3), e_length: int = 5):
        super().__init__(vit)
        depth, dim = len(vit.blocks), vit.dim
        self.g_layers = _layers(g_layers, depth, "g_layers")
        self.e_layers = _layers(e_layers, depth, "e_layers")
        if e_length < 1 or g_length < 1:
            raise ConfigError("method.g_length and method.e_length must be >= 1")
        self.g = _uniform(len(self.g_layers), 2, g_length, dim)
        self.e = _uniform(n_tasks, len(self.e_layers), 2, e_length, dim)
        self.keys = _uniform(n_tasks, dim)
        self.learned = 0  # tasks whose E-prompt may be chosen at test (set by the method)

    def run(self, x, task=None):
        q = F.normalize(self.query(x), dim=1)
        sim = q @ F.normalize(self.keys, dim=1).T  # (B, tasks)
        if task is None:
            task = sim[:, :max(1, self.learned)].argmax(1)
        self.chosen = task
        pull = (1 - sim.gather(1, task[:, None])).mean()
        b = len(x)
        prefixes: dict[int, list[torch.Tensor]] = {}
        for j, i in enumerate(self.g_layers):
            prefixes.setdefault(i, []).append(self.g[j].expand(b, -1, -1, -1))
        e = self.e[task]  # (B, e_layers, 2, length, dim)
        for j, i in enumerate(self.e_layers):
            prefixes.setdefault(i, []).append(e[:, j])
        z = self.vit.encode(self.vit.tokens(x),
                            {i: torch.cat(p, 2) for i, p in prefixes.items()})
        return self.vit.head(z[:, 0]), pull


class ComponentMix(nn.Module):
    """CODA-Prompt's prompt of one layer: weights alpha_m = cos(q * A_m, K_m) over the
    components in use, prompt = sum_m alpha_m P_m (a module, so its FLOPs are counted)."""

    def forward(self, q, keys, attention, components):
        alpha = torch.einsum("bmd,md->bm", F.normalize(q[:, None] * attention, dim=2),
                             F.normalize(keys, dim=1))
        return torch.einsum("bm,mld->bld", alpha, components)


def _mix_parts(inputs) -> tuple[int, int]:
    q, keys, _, components = inputs
    b, m = len(q), len(keys)
    return 2 * b * m * q.shape[1], 2 * b * m * components[0].numel()


def _mix_backward(module, inputs, output, forward) -> int:
    """Each of the two contractions pays once per operand that needs a gradient."""
    q, keys, attention, components = inputs
    f_alpha, f_mix = _mix_parts(inputs)
    left = q.requires_grad or attention.requires_grad
    alpha = left or keys.requires_grad
    return f_alpha * (left + keys.requires_grad) + f_mix * (alpha + components.requires_grad)


@register_flops(ComponentMix, backward=_mix_backward)
def _mix_flops(module, inputs, output) -> int:
    """alpha (B x M dot products of width dim) and the weighted sum of the components."""
    return sum(_mix_parts(inputs))


class CodaPrompts(Prompted):
    """CODA-Prompt (Smith et al., CVPR 2023): per prefixed layer, `pool` prompt components
    P_m (length x dim), keys K_m and attention vectors A_m; the prompt is
    sum_m cos(q * A_m, K_m) P_m, its first half the key prefix and the second the value
    prefix. Task t trains its own `pool / n_tasks` components (initialised orthogonal to
    the earlier ones by Gram-Schmidt); the earlier ones are used but frozen."""

    def __init__(self, vit, n_tasks: int, pool: int = 100, length: int = 8,
                 layers=(0, 1, 2, 3)):
        super().__init__(vit)
        depth, dim = len(vit.blocks), vit.dim
        self.layers = _layers(layers, depth, "layers")
        if pool < n_tasks or pool % n_tasks or length < 2 or length % 2:
            raise ConfigError(f"method.pool={pool} must be a multiple of the {n_tasks} tasks "
                              f"and method.length={length} even (key and value halves)")
        self.per_task = pool // n_tasks
        n = len(self.layers)
        self.components = nn.Parameter(torch.zeros(n, pool, length, dim))
        self.keys = nn.Parameter(torch.zeros(n, pool, dim))
        self.attention = nn.Parameter(torch.zeros(n, pool, dim))
        self.mix = ComponentMix()
        self.task = 0  # components [0, (task + 1) * per_task) are in use
        self.start_task(0)

    @torch.no_grad()
    def start_task(self, task: int) -> None:
        """Task `task`'s components, orthogonal to the earlier ones."""
        self.task = task
        lo, hi = task * self.per_task, (task + 1) * self.per_task
        for p in (self.components, self.keys, self.attention):
            for layer in range(len(self.layers)):
                flat = p.data[layer].flatten(1)
                flat[lo:hi] = _orthogonal_rows(flat[:lo], hi - lo)

    def run(self, x, task=None):
        q = self.query(x)
        hi = (self.task + 1) * self.per_task
        lo = self.task * self.per_task if self.training else hi
        prefixes = {}
        for j, i in enumerate(self.layers):
            parts = [(p[j, :lo].detach(), p[j, lo:hi]) for p in
                     (self.keys, self.attention, self.components)]
            keys, attention, components = (torch.cat(pair) for pair in parts)
            p = self.mix(q, keys, attention, components)  # (B, length, dim)
            prefixes[i] = p.view(len(x), 2, -1, p.shape[-1])
        z = self.vit.encode(self.vit.tokens(x), prefixes)
        return self.vit.head(z[:, 0]), q.new_zeros(())


def _orthogonal_rows(previous: torch.Tensor, n: int) -> torch.Tensor:
    """`n` random orthonormal rows orthogonal to the rows of `previous` (QR in float64);
    random unit rows once the rows outnumber the dimensions."""
    width = previous.shape[1]
    if len(previous) + n > width:
        return F.normalize(torch.randn(n, width), dim=1).to(previous.dtype)
    v = torch.randn(width, n, dtype=torch.float64)
    if len(previous):
        basis = torch.linalg.qr(previous.double().T).Q  # (width, k), orthonormal columns
        v -= basis @ (basis.T @ v)
    return torch.linalg.qr(v).Q.T.to(previous.dtype)
