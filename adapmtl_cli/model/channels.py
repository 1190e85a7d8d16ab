"""Channel groups of a multitask model and their exact physical removal, built on Torch-Pruning.

A *channel group* is the set of weight slices that must disappear together when one output channel of a
``nn.Conv2d`` / ``nn.Linear`` (the group's *root*) is removed: the root's filter and bias, the following
BatchNorm's entries, the next layers' input-channel slices, the other producers summed with it by a residual
addition, the matching slice after a concatenation, a depthwise convolution's channel. The coupling is read from
Torch-Pruning's ``DependencyGraph`` (traced with autograd on an example input; dict / tuple / list outputs are
followed to every tensor leaf), so branches, additions, ``torch.cat``, ``torch.split`` and flatten-into-Linear
are handled by its index mapping, never guessed here.

- :func:`channel_groups` lists the prunable groups (one per coupled set, residual partners appear once).
- :func:`group_norms` gives, per group, the L2 norm of every channel over all its coupled weight slices.
- :func:`remove_channels` returns a physically smaller deep copy that keeps only the listed channels.
- :func:`count_params_flops` counts parameters and FLOPs (Torch-Pruning's op counter).

Exactness guarantee: removing the channels of a group gives, in eval mode, exactly the outputs of the original
model with those channels' activations set to zero at every coupled producer (conv/linear/BatchNorm output),
because every slice that reads or writes them is removed with them and nothing else changes; kept channels keep
their weights bit for bit, in their original order. To keep this true, a group is only offered (and only
removable) when every coupled layer is a Conv2d/Conv1d/Conv3d (ungrouped or depthwise), Linear, BatchNorm or
PReLU and the coupled structural ops are element-wise, concatenation, split or reshape; a group that reaches a
model output (its removal would change an output shape), a protected layer's output channels, a module called
more than once (weight sharing), a grouped convolution, a LayerNorm/GroupNorm or any other op is never offered.
After removal the output structure and shapes are checked against the original's. Parameter-free ops that mix
channels (a softmax or mean over the channel dimension) look element-wise to the graph and are not detected.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch_pruning as tp  # type: ignore[import-untyped]  # no type information shipped
from torch import nn

from adapmtl_cli.errors import ExportError

__all__ = [
    "ChannelGroup",
    "CoupledSlice",
    "channel_groups",
    "count_params_flops",
    "group_norms",
    "remove_channels",
]

_OPTYPE = tp.ops.OPTYPE
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ROOTS = (nn.Conv2d, nn.Linear)
# Parameter-free graph nodes a group may pass through without losing exactness.
_STRUCTURAL = {_OPTYPE.ELEMENTWISE, _OPTYPE.CONCAT, _OPTYPE.SPLIT, _OPTYPE.RESHAPE}
_STRUCTURAL_NAMES = {_OPTYPE.CONCAT: "concat", _OPTYPE.SPLIT: "split", _OPTYPE.RESHAPE: "reshape"}


@dataclass(frozen=True)
class CoupledSlice:
    """One coupled weight slice of a group.

    ``kind`` is ``"out_channels"`` (a conv/linear producing the channel: the root, or a residual partner),
    ``"in_channels"`` (a conv/linear reading it), ``"batchnorm"``, ``"depthwise"`` (a depthwise conv: its
    input and output channel) or ``"prelu"``. ``channels[i]`` is the index in this module of the root's channel
    ``root_channels[i]`` (a flatten into a Linear maps one root channel to several input features).
    """

    module: str
    kind: str
    root_channels: tuple[int, ...]
    channels: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable output-channel group rooted at ``root`` (a Conv2d/Linear qualified name)."""

    root: str
    channels: int
    slices: tuple[CoupledSlice, ...]
    via: tuple[str, ...] = ()
    """Structural ops the coupling crosses, sorted (``"add"``, ``"concat"``, ``"relu"``, ``"reshape"``, ...)."""

    @property
    def members(self) -> list[tuple[str, str]]:
        """``(module qualified name, kind)`` of every coupled slice, the root first."""
        return [(s.module, s.kind) for s in self.slices]


# --------------------------------------------------------------------------------------------------- tracing


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(example_input)``; a mapping is passed as keyword arguments, a tuple or list as positional ones."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (a tensor, or mappings, tuples and lists of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in tensor_leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensor_leaves(v)]
    return []


@contextmanager
def _tracing_state(model: nn.Module) -> Iterator[None]:
    """Grad on, every parameter requiring grad (autograd builds the graph); restores modes and flags after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _build_graph(model: nn.Module, example_input: Any) -> tuple[tp.DependencyGraph, dict[nn.Module, int]]:
    """Torch-Pruning's dependency graph of ``model`` (left in the mode it had) and each module's call count."""
    calls: dict[nn.Module, int] = {}

    def record(module: nn.Module, _args: Any, _out: Any) -> None:
        calls[module] = calls.get(module, 0) + 1

    def forward(m: nn.Module, inputs: Any) -> Any:
        hooks = [sub.register_forward_hook(record) for sub in m.modules()]
        try:
            return call_model(m, inputs)
        finally:
            for h in hooks:
                h.remove()

    def leaves(out: Any) -> list[torch.Tensor]:
        found = [t for t in tensor_leaves(out) if t.grad_fn is not None]
        if not found:
            raise ExportError("channel groups: the model's outputs carry no autograd graph; nothing can be traced")
        # Torch-Pruning marks an output only when its tensor is not also produced by a module or used inside the
        # model; a fresh view per output always gives it its own output node, so its channels stay put.
        return [t.view_as(t) for t in found]

    with _tracing_state(model):
        try:
            graph = tp.DependencyGraph().build_dependency(
                model, example_input, forward_fn=forward, output_transform=leaves, verbose=False
            )
        except ExportError:
            raise
        except Exception as exc:  # Torch-Pruning raises anything on an untraceable model
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise ExportError(
                f"channel groups: Torch-Pruning cannot trace this model ({type(exc).__name__}: {msg})"
            ) from exc
    return graph, calls


# ---------------------------------------------------------------------------------------------- group reading


def _slice_kind(graph: tp.DependencyGraph, module: nn.Module, handler: Callable[..., Any]) -> str | None:
    """The kind of a parameterised coupled slice; None when the module is one exactness cannot be promised for."""
    if isinstance(module, _CONVS):
        if module.transposed:
            return None
        if module.groups == 1:
            return "out_channels" if graph.is_out_channel_pruning_fn(handler) else "in_channels"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        return None
    if isinstance(module, nn.Linear):
        return "out_channels" if graph.is_out_channel_pruning_fn(handler) else "in_channels"
    if isinstance(module, _NORMS):
        return "batchnorm"
    if isinstance(module, nn.PReLU):
        return "prelu" if module.num_parameters > 1 else None
    return None


def _read_group(
    graph: tp.DependencyGraph,
    group: Any,
    names: Mapping[nn.Module, str],
    calls: Mapping[nn.Module, int],
    protected: set[nn.Module],
) -> ChannelGroup | None:
    """A ``ChannelGroup`` for a full Torch-Pruning group, or None when it is not safely prunable."""
    modules = {n: m for m, n in names.items()}
    slices: list[CoupledSlice] = []
    via: set[str] = set()
    for i, (dep, idxs) in enumerate(group):
        node = dep.target
        module = node.module
        if node.type == _OPTYPE.OUTPUT:
            return None  # removal would change a model output's shape
        if node.type in _STRUCTURAL:
            if node.type == _OPTYPE.ELEMENTWISE:
                fn = node.grad_fn.name() if node.grad_fn is not None else "elementwise"
                via.add(fn.split("Backward")[0].lower() or "elementwise")
            else:
                via.add(_STRUCTURAL_NAMES[node.type])
            continue
        if not isinstance(module, nn.Module) or module not in names:
            return None  # an unwrapped nn.Parameter or an op we do not know
        kind = _slice_kind(graph, module, dep.handler)
        if kind is None or calls.get(module, 0) > 1:
            return None
        if kind != "in_channels" and module in protected:
            return None
        roots = group[i].root_idxs
        if any(r is None for r in roots):
            return None
        slices.append(CoupledSlice(names[module], kind, tuple(int(r) for r in roots), tuple(int(x) for x in idxs)))
    merged: dict[tuple[str, str], CoupledSlice] = {}
    for s in slices:  # one module can be reached twice (a residual partner): merge its index lists
        key = (s.module, s.kind)
        if key in merged:
            old = merged[key]
            pairs = set(zip(old.root_channels, old.channels, strict=True))
            pairs |= set(zip(s.root_channels, s.channels, strict=True))
            ordered = sorted(pairs)
            merged[key] = CoupledSlice(s.module, s.kind, tuple(p[0] for p in ordered), tuple(p[1] for p in ordered))
        else:
            merged[key] = s
    # Torch-Pruning's root is whichever layer it met first (maybe a depthwise conv or a residual partner); name
    # the group after its first conv/linear producer in module order instead, in that layer's channel numbers.
    order = {name: i for i, name in enumerate(names.values())}
    width = len(slices[0].channels)
    producers = [
        s
        for s in merged.values()
        if s.kind == "out_channels"
        and isinstance(modules[s.module], _ROOTS)
        and sorted(s.root_channels) == list(range(width))
        and sorted(s.channels) == list(range(width))
    ]
    if not producers:
        return None
    root = min(producers, key=lambda s: order[s.module])
    to_root = dict(zip(root.root_channels, root.channels, strict=True))
    rebased = [
        CoupledSlice(s.module, s.kind, tuple(to_root[r] for r in s.root_channels), s.channels) for s in merged.values()
    ]
    rebased.sort(key=lambda s: (not (s.module == root.module and s.kind == "out_channels"), order[s.module], s.kind))
    return ChannelGroup(root.module, width, tuple(rebased), tuple(sorted(via)))


def _groups_of(
    graph: tp.DependencyGraph,
    model: nn.Module,
    calls: Mapping[nn.Module, int],
    protected: set[nn.Module],
) -> list[ChannelGroup]:
    names = {m: n for n, m in model.named_modules() if n}
    found: list[ChannelGroup] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for group in graph.get_all_groups(ignored_layers=list(protected), root_module_types=_ROOTS):
        read = _read_group(graph, group, names, calls, protected)
        if read is None or read.root in {names.get(p) for p in protected}:
            continue
        key = frozenset(read.members)
        if key in seen:
            continue
        seen.add(key)
        found.append(read)
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(found, key=lambda g: order[g.root])


def channel_groups(
    model: nn.Module, example_input: Any, *, protected: Iterable[nn.Module] | None = None
) -> list[ChannelGroup]:
    """The prunable output-channel groups of every ``nn.Conv2d`` / ``nn.Linear`` in ``model``.

    ``example_input`` is what ``model`` is called with (a tensor; a tuple/list is unpacked, a dict passed as
    keyword arguments). ``protected`` layers (the task output layers) are never roots and their output channels
    are never removed; their input channels do shrink with the layer feeding them. Groups reaching a model output,
    and every other case the module docstring lists, are left out. Each coupled set appears once. The model's
    train/eval modes and ``requires_grad`` flags are restored after tracing.
    """
    graph, calls = _build_graph(model, example_input)
    return _groups_of(graph, model, calls, set(protected or ()))


# ----------------------------------------------------------------------------------------------------- norms


def _squares(module: nn.Module, kind: str, channels: torch.Tensor) -> torch.Tensor:
    """Per listed channel, the sum of squares of this module's slice (weights, and an output slice's biases)."""
    weight = cast(torch.Tensor, module.weight)
    if kind == "in_channels":
        return weight.index_select(1, channels).transpose(0, 1).reshape(len(channels), -1).pow(2).sum(1)
    total = weight.index_select(0, channels).reshape(len(channels), -1).pow(2).sum(1)
    bias = cast("torch.Tensor | None", getattr(module, "bias", None))
    return total if bias is None else total + bias.index_select(0, channels).pow(2)


def group_norms(model: nn.Module, groups: Iterable[ChannelGroup]) -> dict[str, torch.Tensor]:
    """Per group root, the L2 norm of each channel over every coupled weight slice.

    Conv/linear filters and biases, BatchNorm gamma and beta, next layers' input slices, depthwise filters and
    biases, PReLU slopes all count; running statistics do not. A norm is 0 exactly when every coupled parameter of
    that channel is 0. The result is differentiable with respect to the parameters (detach it when a plain value
    is wanted; the gradient of ``sqrt`` at an exact 0 is not finite).
    """
    norms: dict[str, torch.Tensor] = {}
    for group in groups:
        total: torch.Tensor | None = None
        for s in group.slices:
            try:
                module = model.get_submodule(s.module)
            except AttributeError as exc:
                raise ExportError(f"group {group.root!r}: the model has no module {s.module!r}") from exc
            weight = cast(torch.Tensor, module.weight)
            if total is None:
                total = torch.zeros(group.channels, dtype=weight.dtype, device=weight.device)
            idx = torch.tensor(s.channels, dtype=torch.long, device=weight.device)
            roots = torch.tensor(s.root_channels, dtype=torch.long, device=weight.device)
            total = total.index_add(0, roots, _squares(module, s.kind, idx).to(total.dtype))
        if total is None:
            raise ExportError(f"group {group.root!r} has no coupled slices")
        norms[group.root] = total.sqrt()
    return norms


# --------------------------------------------------------------------------------------------------- removal


def _keep_indices(root: str, channels: int, keep: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(keep, torch.Tensor):
        if keep.dtype == torch.bool:
            if keep.numel() != channels:
                raise ExportError(f"keep[{root!r}]: a mask of {keep.numel()} entries for {channels} channels")
            keep = keep.flatten().nonzero().flatten()
        elif keep.is_floating_point() or keep.is_complex():
            raise ExportError(f"keep[{root!r}]: channel indices must be integers, got a {keep.dtype} tensor")
        values = [int(v) for v in keep.flatten().tolist()]
    else:
        values = []
        for v in keep:
            try:
                if isinstance(v, bool):
                    raise TypeError
                values.append(operator.index(v))
            except TypeError:
                raise ExportError(f"keep[{root!r}]: channel index {v!r} is not an integer") from None
    if not values:
        raise ExportError(f"keep[{root!r}]: keeping zero of {channels} channels would cut the model; keep at least one")
    bad = [v for v in values if not 0 <= v < channels]
    if bad:
        raise ExportError(f"keep[{root!r}]: channel index {bad[0]} out of range 0..{channels - 1}")
    if len(set(values)) != len(values):
        raise ExportError(f"keep[{root!r}]: channel indices repeat ({sorted(values)})")
    return sorted(values)


def _shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, Mapping):
        return {k: _shapes(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [_shapes(v) for v in out]
    return type(out).__name__


def remove_channels(
    model: nn.Module,
    example_input: Any,
    keep: Mapping[str, Sequence[int] | torch.Tensor],
    *,
    protected: Iterable[nn.Module] | None = None,
) -> nn.Module:
    """A deep copy of ``model`` with every channel of each group ``keep`` names removed unless listed there.

    ``keep`` maps a group root (as :func:`channel_groups` names it) to the channel indices to keep (a sequence or
    an integer tensor, any order, or a boolean mask); groups not named keep everything. Kept channels stay in
    their original order. ``protected`` is as in :func:`channel_groups` (modules of ``model``). ``model`` itself is
    untouched. Raises ``ExportError`` for an unknown group, an index out of range or repeated, an empty keep list,
    or (should it ever happen) a copy whose output shapes differ from the original's.
    """
    protected_names = {n for n, m in model.named_modules() if any(m is p for p in protected or ())}
    pruned = copy.deepcopy(model)
    by_name = dict(pruned.named_modules())
    graph, calls = _build_graph(pruned, example_input)
    groups = {g.root: g for g in _groups_of(graph, pruned, calls, {by_name[n] for n in protected_names})}
    plan: list[tuple[nn.Module, list[int]]] = []
    for root, wanted in keep.items():
        if root not in groups:
            known = ", ".join(sorted(groups)) or "none"
            raise ExportError(f"keep: {root!r} is not a prunable channel group of this model (groups: {known})")
        group = groups[root]
        kept = _keep_indices(root, group.channels, wanted)
        drop = sorted(set(range(group.channels)) - set(kept))
        if drop:
            plan.append((by_name[root], drop))
    frozen = {name for name, p in pruned.named_parameters() if not p.requires_grad}
    with _tracing_state(pruned):
        pruned.eval()  # shape checks must not move BatchNorm statistics; modes are restored on exit
        with torch.no_grad():
            before = _shapes(call_model(pruned, example_input)) if plan else None
        for module, drop in plan:
            pruner = graph.get_pruner_of_module(module)
            graph.get_pruning_group(module, pruner.prune_out_channels, drop).prune()
        if plan:
            with torch.no_grad():
                after = _shapes(call_model(pruned, example_input))
            if after != before:
                raise ExportError(f"channel removal changed the model's output shapes ({before} -> {after})")
    for name, p in pruned.named_parameters():  # pruned parameters are new tensors: carry the frozen flags over
        p.requires_grad_(name not in frozen)
    return pruned


# ----------------------------------------------------------------------------------------------------- counts


def count_params_flops(model: nn.Module, example_input: Any) -> tuple[int, int]:
    """``(parameters, FLOPs)`` of one forward on ``example_input`` (Torch-Pruning's op counter, multiply-adds)."""
    with torch.no_grad():
        flops, params = tp.utils.count_ops_and_params(model, example_input)
    return int(params), int(flops)


# ----------------------------------------------------------------------------------------------- channel flow


@dataclass(frozen=True)
class FlowNode:
    """One node a group's channels flow through (see :func:`channel_flows`) and the nodes feeding it.

    ``op``: ``"module"`` (``name`` is its qualified name), ``"concat"``, ``"split"``, ``"reshape"`` or an element-wise
    op named as in ``ChannelGroup.via`` (``name`` is ``"#<n>"``). In ``inputs`` (operand order) ``None`` is an
    operand from outside the group: another group's tensor (as at a concatenation or a producer's input), a
    parameter, or a tensor without autograd history (model input, buffer, Python number; never listed at a module).
    A module's own parameters (a Linear's transposed weight) are not inputs.
    """

    name: str
    op: str
    inputs: tuple[str | None, ...]


def _own_parameter(node: Any, module: nn.Module) -> bool:
    own = {id(p) for p in module.parameters(recurse=False)}
    fns = node.grad_fn.next_functions if node.grad_fn is not None else ()
    return bool(fns) and all(id(getattr(f, "variable", None)) in own for f, _ in fns)


def _flow_of(group: Any, names: Mapping[nn.Module, str]) -> tuple[FlowNode, ...]:
    nodes: list[Any] = []
    for node in (n for dep, _ in group for n in (dep.source, dep.target)):
        if all(node is not seen for seen in nodes):
            nodes.append(node)
    keys = {id(n): names.get(n.module, f"#{i}") if n.type not in _STRUCTURAL else f"#{i}" for i, n in enumerate(nodes)}
    flow = []
    for node in nodes:
        inputs: list[str | None] = [keys.get(id(i)) for i in node.inputs]
        op = "module"
        if node.type in _STRUCTURAL:
            fn = node.grad_fn
            inputs += [None] * max(0, len(fn.next_functions if fn is not None else ()) - len(inputs))  # no node
            op = _STRUCTURAL_NAMES.get(node.type) or (fn.name().split("Backward")[0].lower() if fn else "") or "?"
        else:
            inputs = [k for i, k in zip(node.inputs, inputs, strict=True) if not _own_parameter(i, node.module)]
        flow.append(FlowNode(keys[id(node)], op, tuple(inputs)))
    return tuple(flow)


def channel_flows(model: nn.Module, example_input: Any) -> list[tuple[ChannelGroup, tuple[FlowNode, ...]]]:
    """The groups of :func:`channel_groups` (nothing protected), each with the data flow its channels take.

    The flow lists every coupled module and parameter-free op once, with the nodes feeding it in operand order,
    so a caller can follow a channel from its producers to its consumers (e.g. to prove it constant).
    """
    graph, calls = _build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules() if n}
    found: dict[frozenset[tuple[str, str]], tuple[ChannelGroup, tuple[FlowNode, ...]]] = {}
    for group in graph.get_all_groups(root_module_types=_ROOTS):
        read = _read_group(graph, group, names, calls, set())
        if read is not None and frozenset(read.members) not in found:
            found[frozenset(read.members)] = (read, _flow_of(group, names))
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(found.values(), key=lambda item: order[item[0].root])
