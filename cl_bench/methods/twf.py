"""TwF: DER++ plus attention-weighted feature distillation from a frozen pretrained sibling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.data.batch import Batch
from cl_bench.errors import ConfigError
from cl_bench.methods.derpp import DERpp, DERppConf
from cl_bench.models.levels import capture, level_modules
from cl_bench.schemas import defaults_from, schema

SIBLING_BN = ("batch", "running")


@schema("method", "twf")
@dataclass
class TwFConf(DERppConf):
    alpha: float = 0.3  # der_alpha: logit replay (Mammoth models/config/twf.yaml, seq-cifar10)
    beta: float = 0.9  # der_beta: label replay (Mammoth, as alpha)
    lambda_fp: float = 5e-4  # weight of the whole feature-propagation term
    lambda_fp_replay: float = 0.1  # mask replay (BCE to stored masks), inside lambda_fp
    lambda_diverse_loss: float = 0.1  # attention diversity, inside lambda_fp
    levels: list[str] | None = None  # module names; null: the stem's bn1 and the 4 stages
    sibling_bn: str = "batch"  # batch (Mammoth: the sibling's BN uses batch statistics) | running
    gumbel_tau: float = 0.6666666666666666  # temperature of the hard binary Gumbel-softmax
    diverse_temp: float = 2.0  # DiverseLoss temperature (Mammoth: 2)
    overhaul: bool = True  # overhaul-distillation margin on the sibling, skip both-negative
    min_resize: int = 16  # stored masks of maps at least this tall are halved (nearest)
    refresh_masks: bool = True  # at a task's end, recompute its buffered masks (eval mode)


def afd_distance(student: torch.Tensor, sibling: torch.Tensor, rho: torch.Tensor,
                 overhaul: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Attention-weighted squared distance of (B, C, H, W) maps, Mammoth's `DoubleAttn.
    compute_distance`: with `overhaul`, sibling values below the per-channel mean of its
    negative values (over batch and space) are raised to it; both maps are divided by their
    per-channel spatial L2 norm (+ eps); with `overhaul`, positions where the sibling is
    <= 0 and the student below it do not count; then sum over C of the spatial mean of
    rho * (s - t)^2, averaged over the batch."""
    if overhaul:
        neg = (sibling < 0).float()
        margin = (sibling * neg).sum((0, 2, 3), keepdim=True) / (
            neg.sum((0, 2, 3), keepdim=True) + eps)
        sibling = torch.max(sibling, margin)
    t = sibling / (torch.linalg.vector_norm(sibling, dim=(2, 3), keepdim=True) + eps)
    s = student / (torch.linalg.vector_norm(student, dim=(2, 3), keepdim=True) + eps)
    dist = (s - t).pow(2)
    if overhaul:
        dist = dist * (1.0 - ((s <= t) & (t <= 0)).float())
    return (rho * dist).mean((2, 3)).sum(1).mean(0)


def diversity(rho: torch.Tensor, keep: torch.Tensor, temp: float = 2.0) -> torch.Tensor:
    """Mammoth's `DiverseLoss` over the samples `keep` (bool, B): with p_i the spatial mean
    of sample i's mask (C values), mean_i logsumexp_j(p_i . p_j / temp) - 1/temp - log n,
    i, j over the n kept samples (masked, not indexed: no host sync)."""
    p = rho.mean((2, 3))
    dots = (p @ p.T / temp).masked_fill(~keep[None, :], float("-inf"))
    n = keep.sum()
    return (torch.logsumexp(dots, 1) * keep).sum() / n - 1.0 / temp - torch.log(n.float())


def mask_bce(logits: torch.Tensor, target: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """BCE of the 'on' logit (B, C, H, W) to stored masks `target`, mean over the samples
    `forced` (0 when there are none)."""
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    w = forced.float()
    return (per * w).sum() / w.sum().clamp(min=1.0)


class TaskLinear(nn.Module):
    """A linear map with one weight matrix per task (Mammoth's `ConditionalLinear`), over
    the channel axis of a (B, C_in, ...) input. Kaiming-normal (fan-out) init for `gain`,
    N(0, 1) for None."""

    def __init__(self, n_tasks: int, fin: int, fout: int, gain: str | None = "relu"):
        super().__init__()
        w = torch.randn(n_tasks, fout, fin)
        if gain is not None:
            w *= nn.init.calculate_gain(gain) / math.sqrt(fout)
        self.weight = nn.Parameter(w)

    def forward(self, x, task):
        return torch.einsum("boi,bi...->bo...", self.weight[task], x)


class TaskNorm(nn.Module):
    """Batch norm without affine, then a per-task scale (init N(1, 0.02)) and shift (0)."""

    def __init__(self, n_tasks: int, c: int, spatial: bool):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, affine=False) if spatial else nn.BatchNorm1d(c, affine=False)
        self.gamma = nn.Parameter(1 + 0.02 * torch.randn(n_tasks, c))
        self.beta = nn.Parameter(torch.zeros(n_tasks, c))

    def forward(self, x, task):
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        return self.bn(x) * self.gamma[task].view(shape) + self.beta[task].view(shape)


class Adapter(nn.Module):
    """TwF's attention module for one level (Mammoth's `DoubleAttn`, attn_mode `chsp`),
    computed from the sibling's map: channel attention tanh(n(W1 v)) * sigmoid(n(W2 v)) + W3 v
    of the map's spatial mean v, plus spatial attention (1x1 conv to C/4, two 3x3 convs of
    dilation 2, 1x1 conv to one channel, each followed by a task norm, ReLU between), summed,
    then a per-task 1x1 map to two logits per channel and position; the mask is their hard
    binary Gumbel-softmax in training, 'on >= off' in eval. Every weight is per task."""

    def __init__(self, c: int, n_tasks: int, tau: float):
        super().__init__()
        r = max(1, c // 4)
        self.channel = nn.ModuleList([TaskLinear(n_tasks, c, c, g)
                                      for g in ("tanh", "sigmoid", "relu")])
        self.channel_norm = nn.ModuleList([TaskNorm(n_tasks, c, False) for _ in range(2)])
        self.spatial = nn.ModuleList([nn.Conv2d(c, r, 1),
                                      nn.Conv2d(r, r, 3, padding=2, dilation=2),
                                      nn.Conv2d(r, r, 3, padding=2, dilation=2),
                                      nn.Conv2d(r, 1, 1)])
        self.spatial_norm = nn.ModuleList([TaskNorm(n_tasks, k, True) for k in (r, r, r, 1)])
        self.out = TaskLinear(n_tasks, c, 2 * c, None)  # Mammoth: an Embedding's N(0, 1)
        self.tau = tau

    def forward(self, fm: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """(B, C, 2, H, W) logits ('on', 'off') of sibling map `fm` (B, C, H, W)."""
        v = fm.mean((2, 3))
        (a, b, res), (na, nb) = self.channel, self.channel_norm
        ch = torch.tanh(na(a(v, task), task)) * torch.sigmoid(nb(b(v, task), task)) + res(v, task)
        x = fm
        for i, (conv, norm) in enumerate(zip(self.spatial, self.spatial_norm, strict=True)):
            x = norm(conv(x), task)
            x = F.relu(x) if i < 3 else x
        return self.out(ch[:, :, None, None] + x, task).view(len(fm), -1, 2, *fm.shape[2:])

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        if self.training:  # straight-through: the distance's gradient reaches the logits
            return F.gumbel_softmax(logits, self.tau, hard=True, dim=2)[:, :, 0]
        return (logits[:, :, 0] >= logits[:, :, 1]).float()


def _channels(module: nn.Module) -> int | None:
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features if norms else None


@defaults_from(TwFConf)
class TwF(DERpp):
    """Transfer without Forgetting (Boschini et al., ECCV 2022, arXiv 2206.00388; reference
    code: Mammoth `models/twf.py`, `models/twf_utils/`). DER++ plus a frozen copy of the
    model taken when the method is built (the pretrained "sibling"), whose features at each
    level (by default the stem's pre-ReLU `bn1` output and the four stages, Mammoth's five
    levels) an attention-weighted feature distillation (AFD) propagates into the student:
    per level an `Adapter` turns the sibling's map into a binary channel x space mask rho
    and the student pays `afd_distance`. As in the reference code, the term added is
    `lambda_fp` x the mean over levels of [AFD + `lambda_fp_replay` x mask replay +
    `lambda_diverse_loss` x `diversity`], AFD over the current batch and DER++'s
    logit-replay batch, mask replay the `mask_bce` of the replayed samples of past tasks
    to the masks buffered with them, diversity over the samples not of past tasks. The
    adapters are conditioned on each sample's task id and trained by their own optimiser
    (the model's kind, `add_auxiliary`); the gradient of the distance reaches them through
    the straight-through Gumbel mask.

    Buffered masks are those of the step a sample entered memory (halved by nearest
    interpolation when at least `min_resize` tall, stored as uint8), recomputed with the
    adapters in eval mode for the finished task's samples at its end (`refresh_masks`).
    Choices and deviations: DER++ keeps its two memory batches (Mammoth uses one for
    logits and labels) and AFD runs on the first; the current-batch CE is DER++'s over all
    seen classes (Mammoth's covers only the current task's); replayed masks are not cropped
    and flipped with their sample's fresh augmentation; stage outputs are post-ReLU (Mammoth
    reads the last block's pre-ReLU map); the sibling runs one pass per student pass so
    that with `sibling_bn=batch` (Mammoth's, whose teacher is never put in eval mode; its
    running statistics are not updated here) both see the same batch statistics.
    `lambda_fp=0` is DER++ bit for bit. Sibling and adapter FLOPs are the components
    `flops_sibling`, `flops_adapters`. Needs a ResNet with `stages` (model=resnet18_reduced).
    """

    supported_streams = ("task", "online", "blurry")
    stability_knobs = ("alpha", "beta", "lambda_fp")

    def __init__(self, lambda_fp: float, lambda_fp_replay: float,
                 lambda_diverse_loss: float, levels: list[str] | None,
                 sibling_bn: str, gumbel_tau: float,
                 diverse_temp: float, overhaul: bool, min_resize: int,
                 refresh_masks: bool, **kw):
        model = kw["model"]
        if not hasattr(model, "stages"):
            raise ConfigError(f"method=twf needs a ResNet with `stages`, got model "
                              f"{type(model).__name__}: use model=resnet18_reduced")
        for key, value, ok, need in (
                ("lambda_fp", lambda_fp, lambda_fp >= 0, ">= 0"),
                ("lambda_fp_replay", lambda_fp_replay, lambda_fp_replay >= 0, ">= 0"),
                ("lambda_diverse_loss", lambda_diverse_loss, lambda_diverse_loss >= 0, ">= 0"),
                ("sibling_bn", sibling_bn, sibling_bn in SIBLING_BN, f"one of {SIBLING_BN}"),
                ("gumbel_tau", gumbel_tau, gumbel_tau > 0, "> 0"),
                ("diverse_temp", diverse_temp, diverse_temp > 0, "> 0"),
                ("min_resize", min_resize, min_resize >= 1, ">= 1")):
            if not ok:
                raise ConfigError(f"method.{key} must be {need}, got {value!r}")
        names = list(levels) if levels is not None else \
            ["bn1", *(f"stages.{i}" for i in range(len(model.stages)))]
        try:
            channels = [_channels(m) for m in level_modules(model, names)]
        except KeyError as missing:
            raise ConfigError(f"method.levels: the model has no module {missing}") from None
        if None in channels:
            raise ConfigError(f"method.levels: {names[channels.index(None)]} has no "
                              "BatchNorm2d, so it is not a conv feature map")
        super().__init__(**kw)
        self.lambda_fp, self.lambda_fp_replay = lambda_fp, lambda_fp_replay
        self.lambda_diverse_loss, self.diverse_temp = lambda_diverse_loss, diverse_temp
        self.level_names, self.overhaul, self.min_resize = names, overhaul, min_resize
        self.refresh_masks = refresh_masks
        self.sibling = self.frozen_copy(self.model).eval()
        if sibling_bn == "batch":
            for m in self.sibling.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # batch statistics, buffers untouched
        self._sibling_levels = level_modules(self.sibling, names)
        self.add_auxiliary("sibling", self.sibling)  # counted and checkpointed, not trained
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[]):  # DER++'s RNG draws stay the same
            torch.manual_seed(torch.initial_seed())
            self.adapters = nn.ModuleList(Adapter(c, self.class_mask.shape[0], gumbel_tau)
                                          for c in channels).to(device)
        self.add_auxiliary("adapters", self.adapters, self.make_optimizer)
        self.current_task = 0
        self._seen: list = []  # (inputs, levels) of the step's first two student passes
        self._replayed: list[Batch] = []
        self._masks: torch.Tensor | None = None

    @property
    def _active(self) -> bool:
        return self.lambda_fp > 0

    @property
    def _replays_masks(self) -> bool:
        return self._active and self.lambda_fp_replay > 0

    def wrap_model(self, model):
        self._levels = level_modules(model, self.level_names)
        return model

    def before_task(self, task):
        self.current_task = task.id

    def resume_task(self, task):
        self.current_task = task.id

    # -- the student's passes and memory draws of DER++'s loss -----------------------------
    def forward(self, x):
        if not self._active or len(self._seen) >= 2:
            return super().forward(x)
        with capture(self._levels) as feats:
            logits = super().forward(x)
        self._seen.append((self.ctx.last_forward[1], list(feats)))
        return logits

    def replay(self, n, *extras):
        if self._replays_masks and "logits" in extras:  # DER's batch: masks come along
            extras = (*extras, "twf_masks")
        replayed = super().replay(n, *extras)
        self._replayed.append(replayed)
        return replayed

    def loss(self, batch):
        self._seen, self._replayed, self._masks = [], [], None
        terms = super().loss(batch)
        if self._active:
            terms["fp"] = self.lambda_fp * self._feature_propagation(batch)
        self._seen, self._replayed = [], []
        return terms

    # -- the feature-propagation term -------------------------------------------------------
    def _stored_shape(self, shape) -> tuple[int, int, int]:
        c, h, w = shape
        return (c, h // 2, w // 2) if h >= self.min_resize else (c, h, w)

    def _pack(self, rhos: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for rho in rhos:
            shape = self._stored_shape(rho.shape[1:])
            small = F.interpolate(rho, shape[1:]) if shape != rho.shape[1:] else rho
            out.append(small.flatten(1))
        return torch.cat(out, 1).to(torch.uint8)

    def _unpack(self, flat: torch.Tensor, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        shapes = [self._stored_shape(m.shape[1:]) for m in maps]
        parts = flat.float().split([math.prod(s) for s in shapes], 1)
        out = []
        for part, shape, fm in zip(parts, shapes, maps, strict=True):
            mask = part.view(len(flat), *shape)
            out.append(F.interpolate(mask, fm.shape[2:]) if shape[1:] != fm.shape[2:] else mask)
        return out

    def _sibling_maps(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad(), self.flops("sibling"), capture(self._sibling_levels) as maps:
            self.sibling(inputs)
        return list(maps)

    def _feature_propagation(self, batch: Batch) -> torch.Tensor:
        passes = [self._sibling_maps(inputs) for inputs, _ in self._seen]
        sibling = [torch.cat(level) for level in zip(*passes, strict=True)]
        student = [torch.cat(level) for level in zip(*(f for _, f in self._seen), strict=True)]
        n, tasks = len(batch), batch.task
        forced = torch.zeros(n, dtype=torch.bool, device=tasks.device)
        targets = None
        if len(self._seen) > 1:  # DER's replay batch (the step's second pass)
            replayed = self._replayed[0]
            tasks = torch.cat([tasks, replayed.task])
            forced = torch.cat([forced, replayed.task != self.current_task])
            if self._replays_masks:
                targets = self._unpack(replayed.twf_masks, sibling)
        parts = {"afd_distance": [], "afd_diverse": [], "afd_mask_replay": []}
        rhos = []
        with self.flops("adapters"):
            for i, (adapter, s, t) in enumerate(zip(self.adapters, student, sibling,
                                                    strict=True)):
                logits = adapter(t, tasks)
                rho = adapter.mask(logits)
                rhos.append(rho[:n].detach())
                parts["afd_distance"].append(afd_distance(s, t, rho, self.overhaul))
                parts["afd_diverse"].append(diversity(rho, ~forced, self.diverse_temp))
                if targets is not None:
                    parts["afd_mask_replay"].append(
                        mask_bce(logits[n:, :, 0], targets[i], forced[n:]))
        means = {k: torch.stack(v).mean() for k, v in parts.items() if v}
        self.ctx.log.update({k: v.detach() for k, v in means.items()})
        if self._replays_masks:
            self._masks = self._pack(rhos)
        total = means["afd_distance"] + self.lambda_diverse_loss * means["afd_diverse"]
        if "afd_mask_replay" in means:
            total = total + self.lambda_fp_replay * means["afd_mask_replay"]
        return total

    # -- memory ------------------------------------------------------------------------------
    def after_step(self, batch):
        extras = {"logits": self.batch_logits(batch)}
        if self._masks is not None:
            extras["twf_masks"] = self._masks
        self.memory.add(Batch(batch.x, batch.y, batch.task, extras))
        self._masks = None

    def after_task(self, task):
        if not (self._replays_masks and self.refresh_masks and len(self.memory)):
            return
        held = self.memory.stored()
        if "twf_masks" not in held.extras:
            return
        idx = (held.task == task.id).nonzero().squeeze(1)
        if len(idx) < 2:  # batch-statistics BN needs two samples
            return
        self.adapters.eval()
        with torch.no_grad():
            for chunk in idx.tensor_split(max(1, len(idx) // 256)):
                maps = self._sibling_maps(self.preprocess(held.x[chunk]))
                with self.flops("adapters"):
                    rhos = [a.mask(a(m, held.task[chunk]))
                            for a, m in zip(self.adapters, maps, strict=True)]
                held.extras["twf_masks"][chunk] = self._pack(rhos)  # a view of the buffer
        self.adapters.train()
