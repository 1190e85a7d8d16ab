"""Structured shrink: physically remove conv channels that unstructured pruning left carrying nothing.

A channel ``c`` runs from a producer conv ``P`` through channel-wise modules (BatchNorm in eval mode, ReLU,
ReLU6, Dropout, Identity, a depthwise conv) into a consumer conv ``C``. It can be removed from all of them when
the traced graph proves the consumer does not need it:

- ``C.weight[:, c]`` is all zero (the channel is computed but never used), or
- ``P.weight[c]`` is all zero, so the channel is the constant ``k = f(P.bias[c])`` after the chain (for BN,
  ``beta - mean * gamma / sqrt(var + eps)`` when the bias is 0). If ``k == 0`` it adds nothing anywhere; if
  ``k != 0`` and ``C`` has no padding, ``C.bias[o] += k * sum(C.weight[o, c])`` gives the same output. With
  padding a non-zero constant meets zero padding at the borders, so such a channel is kept.

A depthwise conv in the chain passes a constant on only when it is 0 or the conv has no padding, and makes the
channel constant (its bias) when its own filter is zero. The pattern must be proven on a ``torch.fx`` symbolic
trace: every intermediate tensor has exactly one user, every module is called once, modules are of the exact
torch types (no subclasses, hooks or parametrizations), producer and consumer are ungrouped convs, and, when a
component map is given, all convs of a chain belong to one component, and no module of the chain holds a tied
parameter (one tensor held by several modules: slicing it for one holder would untie it, and the others'
copies would keep every channel). Anything else is left alone; a model fx
cannot trace is reported as "shrink not possible for this model", never guessed at. The shrunk copy is checked
against the original on the given inputs (max abs diff ``<= atol``) before it is returned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
_RELU_FUNCTIONS = (F.relu, torch.relu)
_Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
_Norm = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
_M = TypeVar("_M", bound=nn.Module)


@dataclass(frozen=True)
class ZeroFilters:
    """Output channels (filters) of one conv or linear layer whose weights are all zero."""

    layer: str
    channels: int
    zero: tuple[int, ...]


@dataclass(frozen=True)
class ShrinkReport:
    """What :func:`shrink_model` did: channels removed per producer conv, sizes before and after, parity.

    ``reason`` is empty when channels were removed, else says why none were. FLOPs count 2 x the
    multiply-accumulates of conv and linear layers for one input of the inputs' size.
    """

    removed: dict[str, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float
    reason: str = ""

    @property
    def possible(self) -> bool:
        return not self.reason.startswith("shrink not possible")


@dataclass
class _Chain:
    producer: str
    ops: list[fx.Node]
    consumer: str
    remove: list[int] = field(default_factory=list)
    fold: dict[int, float] = field(default_factory=dict)


def zero_filters(model: nn.Module) -> list[ZeroFilters]:
    """Every conv and linear layer with at least one all-zero output channel, in module order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (*_CONVS, nn.Linear)):
            weight = module.weight.detach()
            dead = (weight.reshape(weight.shape[0], -1) == 0).all(dim=1)
            if bool(dead.any()):
                zero = tuple(int(i) for i in torch.nonzero(dead).reshape(-1))
                found.append(ZeroFilters(name, int(weight.shape[0]), zero))
    return found


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example: Tensor) -> int:
    """2 x multiply-accumulates of every conv and linear layer for one input shaped like ``example[:1]``."""
    macs = 0

    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        per_output = module.weight[0].numel() if isinstance(module, _CONVS) else cast(nn.Linear, module).in_features
        macs += out.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return 2 * macs


def shrink_model(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    components: Mapping[str, str] | None = None,
    atol: float = 1e-4,
) -> tuple[nn.Module, ShrinkReport]:
    """Return an eval-mode copy of ``model`` without the channels the graph proves removable, and a report.

    ``model`` is not changed. When nothing can be removed (or tracing fails, or parity fails) the copy is
    returned unchanged and ``report.reason`` says why; a model that cannot be deep-copied is returned itself.

    Args:
        model: the pruned model (exact zeros baked in).
        inputs: example batches; parity is checked on each, FLOPs on the first one's shape.
        components: module fqn -> component name; chains may not cross components. ``None`` allows any.
        atol: largest absolute output difference accepted between the shrunk and the original model.
    """
    original = model
    was_training = original.training
    original.eval()
    try:
        params, flops = count_params(original), count_flops(original, inputs[0])
        try:
            shrunk = copy.deepcopy(original).eval()
        except Exception as exc:  # a user's module may hold anything
            reason = f"shrink not possible for this model (cannot copy it: {_first_line(exc)})"
            return original, ShrinkReport({}, params, params, flops, flops, 0.0, reason)
        try:
            graph = fx.symbolic_trace(shrunk).graph
        except Exception as exc:  # fx raises anything from a user's forward
            reason = f"shrink not possible for this model (torch.fx cannot trace it: {_first_line(exc)})"
            return shrunk, ShrinkReport({}, params, params, flops, flops, 0.0, reason)
        chains = [chain for chain in _find_chains(shrunk, graph, components) if _plan(shrunk, chain)]
        if not chains:
            return shrunk, ShrinkReport({}, params, params, flops, flops, 0.0, "no removable channels")
        _apply_(shrunk, chains)
        diff = _max_output_diff(original, shrunk, inputs)
        if not diff <= atol:
            reason = f"shrink not possible for this model (outputs moved by {diff:.3g} > {atol:g}; left unchanged)"
            return copy.deepcopy(original).eval(), ShrinkReport({}, params, params, flops, flops, diff, reason)
        removed = {chain.producer: len(chain.remove) for chain in chains}
        after = ShrinkReport(removed, params, count_params(shrunk), flops, count_flops(shrunk, inputs[0]), diff)
        return shrunk, after
    finally:
        original.train(was_training)


# --- graph analysis ----------------------------------------------------------------------------


class _Calls:
    """The traced graph's module calls: which node calls a plain, once-called module of a given kind."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.modules = dict(model.named_modules())
        self.tied = _tied_modules(self.modules)
        self.count: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                self.count[str(node.target)] = self.count.get(str(node.target), 0) + 1

    def plain(self, node: fx.Node, kinds: tuple[type[_M], ...], *, once: bool = True) -> _M | None:
        """The module ``node`` calls, if it is exactly one of ``kinds``, hook-free, on one input.

        ``once``: and called nowhere else in the graph (a module that will be rewritten must be; a stateless
        one such as the ReLU a ResNet block calls twice need not).
        """
        calls = self.count.get(str(node.target), 0)
        if node.op != "call_module" or calls == 0 or (once and calls != 1) or len(node.args) != 1 or node.kwargs:
            return None
        module = self.modules[str(node.target)]
        if type(module) not in kinds or module._forward_hooks or module._forward_pre_hooks:
            return None
        if str(node.target) in self.tied:
            return None  # a tied parameter is never sliced (see the module docstring)
        return cast(_M, module)  # type(module) is one of kinds


def _tied_modules(modules: Mapping[str, nn.Module]) -> set[str]:
    """The modules holding a parameter that another module also holds (tied weights)."""
    holders: dict[int, list[str]] = {}
    for name, module in modules.items():
        for param in module._parameters.values():
            if param is not None:
                holders.setdefault(id(param), []).append(name)
    return {name for names in holders.values() if len(names) > 1 for name in names}


def _find_chains(model: nn.Module, graph: fx.Graph, components: Mapping[str, str] | None) -> list[_Chain]:
    calls = _Calls(model, graph)
    chains = []
    for node in graph.nodes:
        producer = calls.plain(node, _CONVS)
        if producer is None or producer.groups != 1:
            continue
        ops: list[fx.Node] = []
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if user.args[:1] != (current,):
                break
            consumer = calls.plain(user, _CONVS)
            if consumer is not None and consumer.groups == 1 and type(consumer) is type(producer):
                convs = [str(node.target), *(str(op.target) for op in ops if op.op == "call_module"), str(user.target)]
                if _same_component(convs, calls.modules, components):
                    chains.append(_Chain(str(node.target), ops, str(user.target)))
                break
            if not _channelwise(user, calls, producer.out_channels):
                break
            ops.append(user)
            current = user
    return chains


def _channelwise(node: fx.Node, calls: _Calls, channels: int) -> bool:
    """Whether ``node`` maps channel ``c`` of its one input to channel ``c`` of its output, nothing else."""
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1 and not node.kwargs
    if calls.plain(node, _ELEMENTWISE, once=False) is not None:
        return True
    module = calls.plain(node, (*_NORMS, *_CONVS))
    if module is None:
        return False
    if isinstance(module, _NORMS):
        return module.track_running_stats and module.running_mean is not None and module.num_features == channels
    assert isinstance(module, _CONVS)  # depthwise, one filter per channel
    return module.groups == module.in_channels == module.out_channels == channels and channels > 1


def _same_component(convs: list[str], modules: dict[str, nn.Module], components: Mapping[str, str] | None) -> bool:
    if components is None:
        return True
    owners = {components.get(name) for name in convs if isinstance(modules[name], _CONVS)}
    return len(owners) == 1 and None not in owners


# --- planning ------------------------------------------------------------------------------------


def _plan(model: nn.Module, chain: _Chain) -> bool:
    """Fill ``chain.remove`` and ``chain.fold``; return whether any channel can go."""
    modules = dict(model.named_modules())
    producer, consumer = cast(_Conv, modules[chain.producer]), cast(_Conv, modules[chain.consumer])  # _find_chains
    channels = producer.out_channels
    weight = producer.weight.detach()
    dead = _zero_rows(weight)
    zeros = torch.zeros(channels, dtype=weight.dtype, device=weight.device)
    value = producer.bias.detach().clone() if producer.bias is not None else zeros
    known = dead.clone()
    value = torch.where(known, value, torch.zeros_like(value))
    nd = producer.weight.dim() - 2
    for op in chain.ops:
        module = modules.get(str(op.target)) if op.op == "call_module" else None
        if isinstance(module, _CONVS):
            value, known = _through_depthwise(module, value, known)
        else:
            with torch.no_grad():
                shaped = value.reshape(1, channels, *([1] * nd))
                out = module(shaped.clone()) if module is not None else torch.relu(shaped)
            value = out.reshape(channels)
    unused = _zero_rows(consumer.weight.transpose(0, 1))
    pad_free = _padding_free(consumer)
    for c in range(channels):
        constant = float(value[c]) if bool(known[c]) else None
        if bool(unused[c]) or constant == 0.0:
            chain.remove.append(c)
        elif constant is not None and pad_free and math.isfinite(constant):
            chain.remove.append(c)
            chain.fold[c] = constant
    if len(chain.remove) == channels:  # a conv needs one channel left; keep the first, unfolded
        chain.fold.pop(chain.remove.pop(0), None)
    return bool(chain.remove)


def _through_depthwise(conv: _Conv, value: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(value)
    own_dead = _zero_rows(weight)
    passes = known & ((value == 0) | _padding_free(conv))
    sums = weight.reshape(weight.shape[0], -1).sum(dim=1)
    new_value = torch.where(own_dead, bias, value * sums + bias)
    new_known = own_dead | passes
    return torch.where(new_known, new_value, torch.zeros_like(new_value)), new_known


def _zero_rows(weight: Tensor) -> Tensor:
    return (weight.detach().reshape(weight.shape[0], -1) == 0).all(dim=1)


def _padding_free(conv: _Conv) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "valid" or all(k == 1 for k in conv.kernel_size)
    return all(p == 0 for p in conv.padding)


# --- surgery ---------------------------------------------------------------------------------------


def _apply_(model: nn.Module, chains: list[_Chain]) -> None:
    modules = dict(model.named_modules())
    keep_out: dict[str, list[int]] = {}
    keep_in: dict[str, list[int]] = {}
    fold: dict[str, Tensor] = {}
    for chain in chains:
        producer, consumer = cast(_Conv, modules[chain.producer]), cast(_Conv, modules[chain.consumer])  # _find_chains
        keep = [c for c in range(producer.out_channels) if c not in set(chain.remove)]
        keep_out[chain.producer] = keep
        for op in chain.ops:
            if op.op == "call_module" and isinstance(modules[str(op.target)], (*_NORMS, *_CONVS)):
                keep_out[str(op.target)] = keep  # channel-wise: BN features, depthwise filters
        keep_in[chain.consumer] = keep
        if chain.fold:
            weight = consumer.weight.detach().to(torch.float64)
            delta = torch.zeros(consumer.out_channels, dtype=torch.float64)
            for c, constant in chain.fold.items():
                delta += constant * weight[:, c].reshape(consumer.out_channels, -1).sum(dim=1)
            fold[chain.consumer] = delta
    for name in {*keep_out, *keep_in}:
        old = modules[name]
        new = (
            _sliced_norm(old, keep_out[name])
            if isinstance(old, _NORMS)
            else _sliced_conv(cast(_Conv, old), keep_out.get(name), keep_in.get(name), fold.get(name))
        )
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)


def _sliced_conv(old: _Conv, out_keep: list[int] | None, in_keep: list[int] | None, fold: Tensor | None) -> nn.Module:
    depthwise = old.groups > 1
    weight = old.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None and not depthwise:
        weight = weight[:, in_keep]
    out_channels = weight.shape[0]
    in_channels = out_channels if depthwise else weight.shape[1]
    bias = old.bias.detach() if old.bias is not None else None
    if fold is not None:
        base = bias.to(torch.float64) if bias is not None else torch.zeros(old.out_channels, dtype=torch.float64)
        bias = (base + fold).to(weight.dtype)
    if bias is not None and out_keep is not None:
        bias = bias[out_keep]
    make = cast("Callable[..., _Conv]", type(old))  # old's own kernel_size, stride, ... tuples fit its type
    new = make(
        in_channels,
        out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=out_channels if depthwise else 1,
        bias=bias is not None,
        padding_mode=old.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            cast(Tensor, new.bias).copy_(bias)  # built with bias=True
    return new.train(old.training)


def _sliced_norm(old: _Norm, keep: list[int]) -> nn.Module:
    # _channelwise admits only norms that track running statistics, so every buffer used here exists.
    running_mean = cast(Tensor, old.running_mean)
    new = type(old)(
        len(keep),
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device=running_mean.device,
        dtype=running_mean.dtype,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(old, name)
            if source is not None:
                getattr(new, name).copy_(source.detach()[keep])
        cast(Tensor, new.num_batches_tracked).copy_(cast(Tensor, old.num_batches_tracked))
    return new.train(old.training)


# --- parity ----------------------------------------------------------------------------------------


def _max_output_diff(original: nn.Module, shrunk: nn.Module, inputs: Sequence[Tensor]) -> float:
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            want, got = _leaves(original(x)), _leaves(shrunk(x))
            if len(want) != len(got):
                return math.inf
            for a, b in zip(want, got, strict=True):
                if a.shape != b.shape:
                    return math.inf
                if a.numel():
                    diff = (a.double() - b.double()).abs()
                    same = (a == b) | (a.isnan() & b.isnan())
                    worst = max(worst, float(torch.where(same, 0.0, diff).nan_to_num(nan=math.inf).max()))
    return worst


def _leaves(output: object) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [leaf for key in output for leaf in _leaves(output[key])]
    if isinstance(output, (list, tuple)):
        return [leaf for item in output for leaf in _leaves(item)]
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
