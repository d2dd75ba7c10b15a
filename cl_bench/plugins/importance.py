"""Per-parameter importance over a task's training data, estimated once the task is
learned: the diagonal Fisher information (EWC, online EWC, mode-IMM) and the output
sensitivity of MAS; plus the quadratic penalty these methods put on parameter changes.

Both estimates average a function of *per-sample* gradients over the task's samples,

    importance = 1/N sum_i sum_l w_il * phi(J_i^T u_il),

where J_i is the Jacobian of sample i's logits with respect to the trainable parameters,
u_il a cotangent on the logits and phi the square (Fisher) or the absolute value (MAS).
Fisher, label c: u = softmax(z) - e_c (the gradient of -log p_c), weight p_c for
`labels="all"` (the exact expectation over the model's predictive distribution), 1 for a
single label; MAS: u = 2 z, the gradient of ||z||^2. Only the *active* logits take part
(`active_classes`): in task-IL the task's own classes, in class-IL the classes seen so
far, in domain-IL all outputs, as in van de Ven's `estimate_fisher(allowed_classes=...)`.

The per-sample gradients are computed in batches. When every trainable parameter belongs
to an `nn.Linear` called once on a 2-D input (MLPs, the frozen-conv model's head), the
gradient of sample i with respect to that layer's weight is the outer product
delta_i a_i^T, so sum_i w_i phi(delta_i a_i^T) = (w * phi(delta))^T phi(a) exactly, for
phi = square and phi = abs alike: one batched backward per cotangent and one matmul per
layer. Any other model goes through autograd one sample at a time (exact, slower).

FLOPs: the estimate runs with the run's counter switched off and is then charged to the
component `importance` as N x (one forward + one backward per cotangent) of a single
sample, the cost of the per-sample gradients it stands for, measured once per estimate by
a temporary counter on one sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.budget.flops import FlopCounter

FISHER_LABELS = ("all", "sample", "pred", "true")
CHUNK = 256  # samples per batched pass

Tensors = dict[str, torch.Tensor]
# (logits of the chunk, labels) -> [(cotangent on the logits, per-sample weight or None)]
Cotangents = Callable[[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor | None]]]


def check_fisher_settings(plugin: str, samples: int | None, labels: str) -> None:
    """A ValueError naming `plugins.<plugin>.fisher_samples` / `fisher_labels` when bad."""
    if samples is not None and samples < 1:
        raise ValueError(f"plugins.{plugin}.fisher_samples={samples} must be >= 1 "
                         f"(or null for every training sample of the task)")
    if labels not in FISHER_LABELS:
        raise ValueError(f"plugins.{plugin}.fisher_labels={labels!r}: choose one of "
                         f"{list(FISHER_LABELS)}")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters by name (the keys importance and anchors are stored under)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> Tensors:
    """Detached copies of the trainable parameters, by name."""
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def on_device(model: nn.Module, tensors: Tensors) -> Tensors:
    """`tensors` (e.g. loaded from a checkpoint, which loads onto the CPU) on the device of
    the parameter of the same name."""
    params = dict(model.named_parameters())
    return {n: t.to(params[n].device) for n, t in tensors.items()}


def quadratic_penalty(model: nn.Module, anchor: Tensors, weight: Tensors | None = None):
    """sum_n weight_n * (theta_n - anchor_n)^2 over the parameters named in `anchor`
    (unweighted without `weight`)."""
    params = dict(model.named_parameters())
    terms = []
    for name, theta0 in anchor.items():
        diff = (params[name] - theta0).pow(2)
        terms.append((diff if weight is None else weight[name] * diff).sum())
    return torch.stack(terms).sum()


def active_classes(method, task_id: int) -> torch.Tensor | None:
    """Bool mask of the logits the importance is taken over: the task's classes in task-IL,
    every class seen so far in class-IL, None (all outputs) in domain-IL."""
    if method.scenario == "task_il":
        return method.class_mask[task_id]
    if method.scenario == "class_il":
        return method.seen_mask.clone()
    return None


def last_task(method, task_id: int) -> bool:
    """Whether `task_id` is the stream's last task (nothing trains after it)."""
    return task_id == method.class_mask.shape[0] - 1


def fisher(method, task, samples: int | None = None, labels: str = "all") -> Tensors:
    """Diagonal Fisher information of the model at its current parameters, averaged over
    `samples` random training samples of `task` (all of them if None), with per-sample
    squared gradients of the negative log-likelihood over the active classes. `labels`
    (van de Ven's `fisher_labels`): "all" = expectation over every active label weighted
    by the predicted probability; "sample" = one label drawn from it; "pred" = the
    arg-max label; "true" = the sample's own label (the empirical Fisher)."""
    if labels not in FISHER_LABELS:
        raise ValueError(f"fisher_labels={labels!r}: choose one of {list(FISHER_LABELS)}")
    gen = _generator(task.id)

    def cotangents(z, y):
        p = torch.softmax(z, dim=1)  # inactive logits are -inf: probability 0
        if labels == "all":
            active = torch.isfinite(z[0]).nonzero().flatten().tolist()
            return [(p - F.one_hot(torch.full_like(y, c), z.shape[1]).to(p), p[:, c])
                    for c in active]
        if labels == "true":
            target = y
        elif labels == "pred":
            target = z.argmax(dim=1)
        else:
            target = torch.multinomial(p.cpu(), 1, generator=gen).flatten().to(y.device)
        return [(p - F.one_hot(target, z.shape[1]).to(p), None)]

    return _estimate(method, task, samples, cotangents, torch.square, gen)


def mas(method, task, samples: int | None = None) -> Tensors:
    """MAS importance (Aljundi et al., ECCV 2018): the mean over `samples` random training
    samples of `task` (all if None) of |d ||z||_2^2 / d theta| per sample, z the active
    logits."""
    gen = _generator(task.id)

    def cotangents(z, y):
        return [(2 * torch.where(torch.isfinite(z), z, 0.0), None)]

    return _estimate(method, task, samples, cotangents, torch.abs, gen)


def _generator(task_id: int) -> torch.Generator:
    # its own stream (seeded by the run's seed and the task), so estimating importance
    # draws nothing from the training RNG
    return torch.Generator().manual_seed((torch.initial_seed() + 7919 * (task_id + 1)) % 2**63)


def _estimate(method, task, samples, cotangents: Cotangents, phi, gen) -> Tensors:
    model, counter = method.model, method.counter
    n = len(task.train_y)
    if samples is None or samples >= n:
        index = torch.arange(n)
    else:
        index = torch.randperm(n, generator=gen)[:samples]
    index = index.to(task.train_y.device)
    active = active_classes(method, task.id)
    params = trainable(model)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training, was_enabled = model.training, counter.enabled
    model.eval()
    counter.enabled = False
    n_cotangents = 0
    try:
        x0 = method.preprocess(task.train_x[index[:1]], train=False)
        forward, backward = _per_sample_flops(model, x0)
        outer_products = _outer_products_apply(model, x0, params)
        for chunk in index.split(CHUNK):
            x = method.preprocess(task.train_x[chunk], train=False)
            y = task.train_y[chunk]
            if outer_products:
                n_cotangents += _linear_pass(model, x, y, active, cotangents, phi, total)
            else:
                n_cotangents += _sample_pass(model, x, y, active, params, cotangents, phi, total)
    finally:
        counter.enabled = was_enabled
        model.train(was_training)
    with method.flops("importance"):
        counter.add(len(index) * forward + n_cotangents * backward)
    return {name: t / len(index) for name, t in total.items()}


def _masked(z: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    return z if active is None else z.masked_fill(~active, float("-inf"))


def _per_sample_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Forward and backward FLOPs of one sample `x` (batch of 1), by a temporary counter."""
    probe = FlopCounter().attach(model)
    try:
        with torch.no_grad():
            model(x)
        forward = probe.train_flops
        with torch.enable_grad():
            model(x)  # with gradients: the counter adds the backward
        return forward, probe.train_flops - 2 * forward
    finally:
        probe.detach()


def _record_linear(model: nn.Module, x: torch.Tensor):
    """Runs `model(x)` with gradients and returns the logits and, per `nn.Linear` call,
    (module, input, output)."""
    calls = []

    def record(mod, inp, out):
        calls.append((mod, inp[0], out))
        # the model goes on with a copy: an in-place activation (ReLU(inplace=True)) would
        # otherwise overwrite the output whose gradient is the layer's delta
        return out.clone()

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.enable_grad():
            z = model(x)
    finally:
        for h in hooks:
            h.remove()
    return z, calls


def _outer_products_apply(model: nn.Module, x: torch.Tensor, params: dict) -> bool:
    """Whether every trainable parameter is a weight or bias of an `nn.Linear` that runs
    once per forward on a 2-D (sample, feature) input, checked on a batch `x` of one."""
    _, calls = _record_linear(model, x)
    modules = [mod for mod, _, _ in calls]
    if len(set(map(id, modules))) != len(modules):
        return False
    if any(inp.dim() != 2 or len(inp) != len(x) for _, inp, _ in calls):
        return False
    covered = {id(p) for m in modules for p in (m.weight, m.bias) if p is not None}
    return all(id(p) in covered for p in params.values())


def _linear_pass(model, x, y, active, cotangents, phi, total) -> int:
    names = {id(p): n for n, p in model.named_parameters()}
    z, calls = _record_linear(model, x)
    calls = [c for c in calls if c[2].requires_grad]  # e.g. a frozen first layer: no delta
    outputs = [out for _, _, out in calls]
    inputs = [phi(inp.detach()) for _, inp, _ in calls]
    pairs = cotangents(_masked(z.detach(), active), y)
    for u, w in pairs:
        deltas = torch.autograd.grad((z * u).sum(), outputs, retain_graph=True,
                                     allow_unused=True)
        for (mod, _, _), a, delta in zip(calls, inputs, deltas, strict=True):
            if delta is None:
                continue
            d = phi(delta)
            if w is not None:
                d = d * w.unsqueeze(1)
            if mod.weight.requires_grad:
                total[names[id(mod.weight)]] += d.T @ a
            if mod.bias is not None and mod.bias.requires_grad:
                total[names[id(mod.bias)]] += d.sum(0)
    return len(pairs) * len(y)


def _sample_pass(model, x, y, active, params, cotangents, phi, total) -> int:
    names, tensors = list(params), list(params.values())
    count = 0
    for i in range(len(y)):
        with torch.enable_grad():
            z = model(x[i : i + 1])
        pairs = cotangents(_masked(z.detach(), active), y[i : i + 1])
        for u, w in pairs:
            grads = torch.autograd.grad(z, tensors, u, retain_graph=True, allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    total[name] += phi(g) if w is None else w[0] * phi(g)
        count += len(pairs)
    return count
