"""FLOP accounting from the shapes that actually flow through the counted layers.

**Registry.** `register_flops(module_type, fn)` maps a layer type to `fn(module, inputs,
output)`, the forward FLOPs of one call (2 per multiply-accumulate). Built in: `nn.Linear`,
`nn.Conv1d/2d/3d` and `nn.MultiheadAttention` (its q/k/v/out projections and the two
attention matmuls, from shapes: it calls its projections functionally, so hooks on
`out_proj` never fire). A module resolves to its nearest registered base along the MRO
when it is attached (a `MaskedLinear(nn.Linear)` counts as a Linear unless it registers
itself); `register_flops(T, None)` marks `T` as deliberately uncounted.

**Backward.** When the pass runs with gradients enabled its backward is counted at the
same time: one forward-sized product for the weight gradient when a weight matrix of the
layer trains, and one for the input gradient when the input itself needs a gradient (so
the lowest trainable layer pays 1x, a frozen layer that still passes gradients pays 1x,
and layers below the lowest one needing a gradient pay nothing). This is what autograd
executes and matches `torch.utils.flop_counter.FlopCounterMode`. A registration may pass
its own `backward` (attention does: its matmuls have two operands needing gradients).

**Dense and sparse.** `fn` may return an int, or a pair `(dense, sparse)` for a masked or
sparse layer, where `sparse` counts only the weights that are live (density x dense).
Following `papers/methods_sparse.md` section 10 (RigL, SparCL, SpFDE all quote training
FLOPs with the density factor d_l), `train_flops`/`eval_flops` are the sparse counts, the
ones budgets and FLOP caps compare, and `train_flops_dense`/`eval_flops_dense` the dense
ones. Note the naming: section 10 calls the density-weighted count "theoretical" and the
dense one "as executed", since PyTorch multiplies a masked weight densely;
`FlopCounterMode` therefore agrees with the dense totals. The default backward scales the
pair the same way (3 f_S per sample for a static sparse layer); a layer whose weight
gradient is dense (RigL update step, SupSup scores) registers its own `backward`. For a
dense model both totals are equal.

**Fallback.** A leaf module of an unregistered type that owns a weight matrix (a parameter
with 2+ dimensions) is counted by running it once more under `FlopCounterMode` per distinct
(type, input shapes, parameter shapes, which of them need gradients), forward and, in a
pass with gradients, backward, and caching the result. Measuring the backward rather than
scaling the forward keeps a leaf doing several matmuls exact (a low-rank `x @ U @ V` pays
an input gradient inside); for a single-matmul layer it equals the rule above.
Parameter-free modules, norms (1-D weights) and activations stay uncounted, as in DESIGN.md.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

Flops = int | tuple[int, int]
ForwardFn = Callable[[nn.Module, tuple, object], Flops]
BackwardFn = Callable[[nn.Module, tuple, object, Flops], Flops]

_REGISTRY: dict[type, tuple[ForwardFn, BackwardFn] | None] = {}
_UNKNOWN = object()
_DECORATE = object()


def register_flops(module_type: type, fn=_DECORATE, *, backward: BackwardFn | None = None):
    """Count `module_type` (and subclasses registering nothing closer) with `fn(module, inputs,
    output) -> int | (dense, sparse)`, its forward FLOPs; `inputs` are the positional inputs
    (keyword ones bound in order). `backward(module, inputs, output, forward)` replaces the
    default backward rule. `fn=None` leaves the type uncounted. Usable as a decorator."""
    if fn is _DECORATE:
        def decorate(f):
            register_flops(module_type, f, backward=backward)
            return f
        return decorate
    _REGISTRY[module_type] = None if fn is None else (fn, backward or weight_and_input_grads)
    return fn


def flops_rule(module_type: type):
    """The (forward, backward) pair `module_type` resolves to, None if deliberately
    uncounted, or `_UNKNOWN`."""
    for cls in module_type.__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return _UNKNOWN


def _scale(flops: Flops, factor: int) -> Flops:
    if type(flops) is tuple:
        return flops[0] * factor, flops[1] * factor
    return flops * factor


def _weight_trains(module: nn.Module) -> bool:
    return any(p is not None and p.requires_grad and p.ndim >= 2
               for p in module._parameters.values())


def weight_and_input_grads(module: nn.Module, inputs: tuple, output, forward: Flops) -> Flops:
    """The default backward: 1x forward for the weight gradient if a weight matrix trains,
    1x for the input gradient if the first input needs one."""
    x = inputs[0] if inputs else None
    needs_dx = isinstance(x, torch.Tensor) and x.requires_grad
    return _scale(forward, _weight_trains(module) + needs_dx)


@register_flops(nn.Linear)
def linear_flops(module: nn.Linear, inputs: tuple, output) -> int:
    """2 x inputs x out_features."""
    return 2 * inputs[0].numel() * module.out_features


def conv_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """2 x outputs x (in_channels / groups) x kernel size."""
    macs_per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return 2 * output.numel() * macs_per_output


for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_flops(_conv, conv_flops)
for _lookup in (nn.Embedding, nn.EmbeddingBag):  # table lookups: no multiply-accumulates
    register_flops(_lookup, None)


def _attention_parts(m: nn.MultiheadAttention, inputs: tuple) -> tuple[int, ...]:
    """Forward FLOPs of the q, k, v projections, of q k^T, of attn v, and of out_proj."""
    query, key = inputs[0], inputs[1]
    if query.dim() == 3:
        n, length = query.shape[:2] if m.batch_first else query.shape[1::-1]
        source = key.shape[1] if m.batch_first else key.shape[0]
    else:  # unbatched (L, E)
        n, length, source = 1, query.shape[0], key.shape[0]
    e = m.embed_dim
    attended = source + (m.bias_k is not None) + bool(m.add_zero_attn)
    matmul = 2 * n * length * attended * e
    return (2 * n * length * e * e, 2 * n * source * m.kdim * e, 2 * n * source * m.vdim * e,
            matmul, matmul, 2 * n * length * e * e)


def attention_flops(m: nn.MultiheadAttention, inputs: tuple, output) -> int:
    """Projections and the two attention matmuls of `nn.MultiheadAttention`."""
    return sum(_attention_parts(m, inputs))


def _trains(*params) -> bool:
    return any(p is not None and p.requires_grad for p in params)


def attention_backward(m: nn.MultiheadAttention, inputs: tuple, output, forward) -> int:
    """Projections follow the default rule; each attention matmul pays 1x per operand that
    needs a gradient; out_proj pays 1x for its weight and 1x for its input."""
    f_q, f_k, f_v, f_s, f_av, f_o = _attention_parts(m, inputs)
    query, key, value = inputs[:3]
    if m._qkv_same_embed_dim:
        wq = wk = wv = m.in_proj_weight.requires_grad
    else:
        wq, wk, wv = (m.q_proj_weight.requires_grad, m.k_proj_weight.requires_grad,
                      m.v_proj_weight.requires_grad)
    bias = _trains(m.in_proj_bias)
    q_req = query.requires_grad or wq or bias
    k_req = key.requires_grad or wk or bias or _trains(m.bias_k)
    v_req = value.requires_grad or wv or bias or _trains(m.bias_v)
    s_req = q_req or k_req  # the attention probabilities
    return (f_q * (wq + query.requires_grad) + f_k * (wk + key.requires_grad)
            + f_v * (wv + value.requires_grad) + f_s * (q_req + k_req) + f_av * (s_req + v_req)
            + f_o * (m.out_proj.weight.requires_grad + (s_req or v_req)))


register_flops(nn.MultiheadAttention, attention_flops, backward=attention_backward)

_SIGNATURES: dict[type, inspect.Signature] = {}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """Positional inputs with the keyword ones put in their places (up to the first gap)."""
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(module.forward)
    try:
        bound = sig.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return args + tuple(kwargs.values())
    inputs = []
    for name, param in sig.parameters.items():
        if param.kind not in _POSITIONAL or name not in bound:
            break
        inputs.append(bound[name])
    return tuple(inputs)


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _shape_key(x):
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.requires_grad)
    if isinstance(x, (tuple, list)):
        return tuple(_shape_key(v) for v in x)
    if isinstance(x, dict):
        return tuple((k, _shape_key(v)) for k, v in x.items())
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return type(x).__name__


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _fresh(x):
    """`x` with every tensor detached into a leaf that needs a gradient where `x`'s did."""
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(x.requires_grad)
    if isinstance(x, (tuple, list)):
        return type(x)(_fresh(v) for v in x)
    if isinstance(x, dict):
        return {k: _fresh(v) for k, v in x.items()}
    return x


def _needs_fallback(module: nn.Module) -> bool:
    return next(module.children(), None) is None and any(
        p is not None and p.ndim >= 2 for p in module._parameters.values())


def measure_flops(module: nn.Module, args: tuple, kwargs: dict, backward: bool = False) -> int:
    """FLOPs of `module(*args, **kwargs)` by `FlopCounterMode`: the forward, plus with
    `backward` the gradients autograd computes for the inputs and parameters that need one.
    Runs `module.forward` again without hooks, RNG draws, `.grad` writes, or counts leaking
    into a FlopCounterMode the caller has open."""
    # imported here: torch.utils.flop_counter adds ~0.1 s to every run's start-up
    from torch.utils.flop_counter import FlopCounterMode

    try:  # hides the fallback's own forward from a FlopCounterMode the caller has open
        from torch.utils._python_dispatch import _disable_current_modes
    except ImportError:  # pragma: no cover - private API moved
        _disable_current_modes = nullcontext
    tensors = _tensors((args, kwargs)) + list(module.parameters(recurse=False))
    cuda = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    with (torch.random.fork_rng(devices=cuda, device_type="cuda"), _disable_current_modes(),
          FlopCounterMode(display=False) as mode):
        if not backward:
            with torch.no_grad():
                module.forward(*args, **kwargs)
        else:
            with torch.enable_grad():
                args, kwargs = _fresh(args), _fresh(kwargs)
                outs = [t for t in _tensors(module.forward(*args, **kwargs)) if t.requires_grad]
                wrt = [t for t in _tensors((args, kwargs)) if t.requires_grad]
                wrt += [p for p in module.parameters() if p.requires_grad]
                torch.autograd.grad(outs, wrt, [torch.ones_like(t) for t in outs],
                                    allow_unused=True)
    return mode.get_total_flops()


class _Hook:
    """The forward hook one counter puts on one module (`forward=None`: the fallback)."""

    __slots__ = ("counter", "forward", "backward")

    def __init__(self, counter: FlopCounter, forward: ForwardFn | None, backward: BackwardFn):
        self.counter, self.forward, self.backward = counter, forward, backward

    def __call__(self, module, args, kwargs, output):
        counter = self.counter
        if not counter.enabled:
            return
        out = output if isinstance(output, torch.Tensor) else _first_tensor(output)
        with_backward = out is not None and out.requires_grad and torch.is_grad_enabled()
        tally = counter._tally if with_backward and counter.phase == "train" else None
        if self.forward is None:
            flops = counter._fallback_flops(module, args, kwargs, with_backward)
            if tally is not None:
                forward = _pair(counter._fallback_flops(module, args, kwargs, False))
                tally.add(*(a - b for a, b in zip(_pair(flops), forward, strict=True)))
        else:
            inputs = _bind(module, args, kwargs) if kwargs else args
            flops = self.forward(module, inputs, output)
            if with_backward:
                backward = self.backward(module, inputs, output, flops)
                if tally is not None:
                    tally.add(*_pair(backward))
                if type(flops) is tuple or type(backward) is tuple:
                    flops, backward = _pair(flops), _pair(backward)
                    flops = flops[0] + backward[0], flops[1] + backward[1]
                else:
                    flops += backward
        if type(flops) is tuple:
            dense, flops = flops
        else:
            dense = flops
        if counter.phase == "train":
            counter.train_flops += flops
            counter.train_flops_dense += dense
            if counter._component is not None:
                name = counter._component
                counter.components[name] = counter.components.get(name, 0) + flops
        else:
            counter.eval_flops += flops
            counter.eval_flops_dense += dense


def _pair(flops: Flops) -> tuple[int, int]:
    return flops if type(flops) is tuple else (flops, flops)


class BackwardTally:
    """The backward share of the training FLOPs counted inside `FlopCounter.tally()`, dense
    and at density (e.g. to price differentiating that backward once more, as a look-ahead
    meta step does)."""

    __slots__ = ("dense", "flops")

    def __init__(self):
        self.dense = self.flops = 0

    def add(self, dense: int, flops: int) -> None:
        self.dense += dense
        self.flops += flops


class FlopCounter:
    """Counts training and evaluation FLOPs of the modules it is attached to.

    `train_flops`/`eval_flops` count sparse layers at their density, `*_dense` densely
    (equal for dense models); `components` holds training FLOPs by `component(name)`."""

    def __init__(self):
        self.train_flops = 0
        self.eval_flops = 0
        self.train_flops_dense = 0
        self.eval_flops_dense = 0
        self.phase = "train"
        self.enabled = True
        self.components: dict[str, int] = {}  # train FLOPs by the component they ran under
        self.overhead: dict[str, int] = {}  # work outside training FLOPs (mask updates)
        self._component: str | None = None
        self._tally: BackwardTally | None = None
        self._modules: weakref.WeakSet = weakref.WeakSet()
        self._fallback_cache: dict[tuple, int] = {}

    def __getstate__(self) -> dict:  # a copy knows no modules (weak references do not pickle)
        return {k: v for k, v in self.__dict__.items() if k != "_modules"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _modules=weakref.WeakSet())

    def _hook_of(self, module: nn.Module):
        for key, hook in module._forward_hooks.items():
            if isinstance(hook, _Hook) and hook.counter is self:
                return key
        return None

    def attach(self, model: nn.Module) -> FlopCounter:
        """Hooks every counted module of `model` not hooked by this counter yet (so attaching
        twice, a submodule, or a deep copy that carried the hooks along, counts once)."""
        for module in model.modules():
            if self._hook_of(module) is not None:
                self._modules.add(module)  # e.g. a deep copy: detach() removes it too
                continue
            rule = flops_rule(type(module))
            if rule is _UNKNOWN:
                if not _needs_fallback(module):
                    continue
                rule = (None, weight_and_input_grads)
            elif rule is None:
                continue
            module.register_forward_hook(_Hook(self, *rule), with_kwargs=True)
            self._modules.add(module)
        return self

    def detach(self) -> None:
        """Removes this counter's hooks from every module it attached to."""
        for module in list(self._modules):
            while (key := self._hook_of(module)) is not None:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
        self._modules = weakref.WeakSet()

    def _fallback_flops(self, module: nn.Module, args: tuple, kwargs: dict,
                        backward: bool) -> int:
        key = (type(module), _shape_key(args), _shape_key(kwargs), backward,
               tuple((p.shape, p.requires_grad) for p in module.parameters(recurse=False)))
        flops = self._fallback_cache.get(key)
        if flops is None:
            flops = self._fallback_cache[key] = measure_flops(module, args, kwargs, backward)
        return flops

    @contextmanager
    def evaluating(self):
        previous, self.phase = self.phase, "eval"
        try:
            yield
        finally:
            self.phase = previous

    @contextmanager
    def component(self, name: str):
        """Training FLOPs counted inside also add to `components[name]` (nesting: innermost)."""
        previous, self._component = self._component, name
        try:
            yield
        finally:
            self._component = previous

    @contextmanager
    def tally(self):
        """Yields a `BackwardTally` of the backward FLOPs of the training passes counted
        inside (nesting: innermost). Counting itself is unchanged."""
        previous, self._tally = self._tally, BackwardTally()
        try:
            yield self._tally
        finally:
            self._tally = previous

    def add(self, flops: int, component: str | None = None, dense: int | None = None) -> None:
        """Training FLOPs done outside counted modules (e.g. a projector update), tagged
        `component` (default: the current one); `dense`, the as-executed count where it
        differs from `flops`."""
        if not self.enabled:
            return
        self.train_flops += flops
        self.train_flops_dense += flops if dense is None else dense
        name = component or self._component
        if name is not None:
            self.components[name] = self.components.get(name, 0) + flops

    def add_overhead(self, flops: int, name: str) -> None:
        """Bookkeeping work kept out of the training FLOPs (e.g. sorting for a mask update),
        reported as `overhead_flops_<name>`."""
        if self.enabled:
            self.overhead[name] = self.overhead.get(name, 0) + flops

    def component_columns(self) -> dict[str, int]:
        """Cumulative training FLOPs of every component tagged so far, as
        `{"flops_<name>": flops}` in the order they were first tagged, then the overheads
        as `{"overhead_flops_<name>": flops}`."""
        return {**{f"flops_{name}": flops for name, flops in self.components.items()},
                **{f"overhead_flops_{name}": flops for name, flops in self.overhead.items()}}

    def state_dict(self) -> dict:
        """The totals and components, for a checkpoint."""
        return {"train_flops": self.train_flops, "eval_flops": self.eval_flops,
                "train_flops_dense": self.train_flops_dense,
                "eval_flops_dense": self.eval_flops_dense, "components": dict(self.components),
                "overhead": dict(self.overhead)}

    def load_state_dict(self, state: dict) -> None:
        """Restores `state_dict()`; dense totals missing from an older checkpoint are taken
        equal to the sparse ones."""
        self.train_flops, self.eval_flops = state["train_flops"], state["eval_flops"]
        self.train_flops_dense = state.get("train_flops_dense", self.train_flops)
        self.eval_flops_dense = state.get("eval_flops_dense", self.eval_flops)
        self.components.clear()
        self.components.update(state.get("components", {}))
        self.overhead = dict(state.get("overhead", {}))
