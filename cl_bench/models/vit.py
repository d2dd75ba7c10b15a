"""A Vision Transformer (Dosovitskiy et al., ICLR 2021) whose blocks accept prompts: tokens
prepended at the input (prompt tuning, L2P) and key/value prefixes per layer (prefix tuning,
DualPrompt, CODA-Prompt). Parameter names follow timm's `VisionTransformer`, so a timm
checkpoint of the same shape loads as it is (`model.weights=timm:<name>`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import register_flops
from cl_bench.models.pretrained import RUNNER_KEYS, PretrainedModelConf
from cl_bench.schemas import defaults_from, schema


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(d)) v over (B, heads, L, d) tensors: the two attention matmuls,
    a module of its own so the FLOP counter sees their shapes (prefixes make the keys
    longer than the queries)."""

    def forward(self, q, k, v):
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return attn.softmax(-1) @ v


def _core_matmul(q, k) -> int:
    b, h, lq, d = q.shape
    return 2 * b * h * lq * k.shape[2] * d


@register_flops(AttentionCore, backward=lambda m, inputs, out, fwd: _core_backward(inputs))
def core_flops(module, inputs, output) -> int:
    """q k^T and attn v: 2 x B x heads x L_q x L_k x d each."""
    return 2 * _core_matmul(inputs[0], inputs[1])


def _core_backward(inputs) -> int:
    """Each matmul pays once per operand that needs a gradient (the probabilities need one
    when q or k does)."""
    q, k, v = inputs
    f = _core_matmul(q, k)
    scores = q.requires_grad or k.requires_grad
    return f * (q.requires_grad + k.requires_grad + scores + v.requires_grad)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, prefix: torch.Tensor | None = None):
        """`prefix`: (B, 2, P, dim) keys and values prepended after the projection."""
        b, n, c = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        if prefix is not None:
            pk, pv = prefix.view(b, 2, -1, h, c // h).permute(1, 0, 3, 2, 4)
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        out = self.core(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, prefix=None):
        x = x + self.attn(self.norm1(x), prefix)
        return x + self.mlp(self.norm2(x))


@schema("model", "vit")
@dataclass
class ViTConf(PretrainedModelConf):
    _target_: str = "cl_bench.models.vit.ViT"
    name: str = "vit"
    patch: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    resize: int | None = None


@defaults_from(ViTConf, skip=RUNNER_KEYS)  # the runner reads those
class ViT(nn.Module):
    """Pre-norm ViT with a [CLS] token and learned positions. `resize`: inputs are resized
    to this many pixels first (a 224-pixel hub checkpoint on 32x32 CIFAR, as L2P does);
    null keeps them. The default is the small 32x32 ViT the CPU protocol pretrains itself
    (patch 4: 64 patches + [CLS]; dim 128, depth 4, 4 heads: ~56 M multiply-adds)."""

    def __init__(self, input_shape, n_classes: int, patch: int, dim: int,
                 depth: int, heads: int, mlp_ratio: float,
                 resize: int | None):
        super().__init__()
        c, h, w = input_shape
        side = resize or h
        if resize is None and h != w:
            raise ValueError(f"model=vit needs square inputs, got {tuple(input_shape)}")
        if side % patch or dim % heads:
            raise ValueError(f"model.patch={patch} must divide the {side}-pixel input and "
                             f"model.heads={heads} must divide model.dim={dim}")
        self.resize, self.dim, self.depth = resize, dim, depth
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(c, dim, patch, patch)
        n_patches = (side // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)
        self.feature_dim = dim
        self.apply(_init)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] and patch tokens with their positions: (B, 1 + patches, dim)."""
        if self.resize is not None and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              align_corners=False)
        z = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls_token.expand(len(z), -1, -1), z], 1)
        return z + self.pos_embed

    def encode(self, z: torch.Tensor, prefixes: dict[int, torch.Tensor] | None = None,
               ) -> torch.Tensor:
        """The blocks and the final norm over tokens `z`; `prefixes[i]` (B, 2, P, dim) are
        key/value prefixes of block i."""
        prefixes = prefixes or {}
        for i, block in enumerate(self.blocks):
            z = block(z, prefixes.get(i))
        return self.norm(z)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The [CLS] output: the query of the prompt methods and the linear probe's input."""
        return self.encode(self.tokens(x))[:, 0]

    def forward(self, x):
        return self.head(self.features(x))


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
