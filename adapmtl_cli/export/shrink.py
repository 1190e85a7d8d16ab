"""Structured shrink: physically remove conv channels that unstructured pruning left carrying nothing.

Channels are removed group by group on Torch-Pruning's dependency graph (:mod:`adapmtl_cli.model.channels`): a
group holds every slice that goes with one channel (its producing convs, the residual partners added to them,
BatchNorms, depthwise convs, and the input slices of every consumer after additions, concatenations, splits and
flattens). Removing a channel takes its contribution out of each consumer and changes nothing else, so a channel
is removed only when every consumer (an ``in_channels`` slice) provably gets nothing from it:

- the consumer's weights for it are all zero (the channel is computed but never read), or
- it is a known constant at the consumer's input: every producer filter of it is zero (each producer outputs its
  bias), and every node between the producers and that consumer maps a spatially uniform input to a uniform
  output that does not depend on the model's input: BatchNorm (eval, running statistics), PReLU, point-wise ops
  (ReLU, hardtanh, an addition of two coupled tensors, ...), max pooling, concatenation, split and reshape, and a
  depthwise conv whose own filter is zero, or that pads with no zeros, or whose input channel is 0. An operand
  from outside the group (a buffer, the model input, a Python number) or any other op breaks the proof. The
  constant is read off one forward pass on the first input. If it is 0 it adds nothing; else, when the consumer
  has no zero padding (a Linear, an unpadded conv), ``bias[o] += k * sum(weight[o, c])`` gives the same output.
  A non-zero constant meeting zero padding changes the borders, so that channel is kept.

Every coupled module must be of an exact torch type (no subclass, hook or parametrization), hold no tied
parameter (one tensor held by several modules: slicing it for one holder would untie it) and, when a component
map is given, all convs and linears of a group must belong to one component. One channel of a group always
stays. The forward must be static: torch.fx must trace it (Torch-Pruning records one execution, so a branch on
a tensor's value could hide another path; fx's graph is not used otherwise). A model that cannot be copied or
traced is reported as "shrink not possible for this model", never guessed at. The shrunk copy is checked against
the original on every given input (max abs diff ``<= atol``) before it is returned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, fx, nn

from adapmtl_cli.model.channels import (
    ChannelGroup,
    CoupledSlice,
    FlowNode,
    channel_flows,
    remove_channels,
    tensor_leaves,
)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TRUSTED = (*_CONVS, *_NORMS, nn.Linear, nn.PReLU)
_Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
# Parameter-free nodes that map a uniform, input-independent channel to another one (names as FlowNode.op).
_UNIFORM_OPS = frozenset(
    {"concat", "split", "reshape", "relu", "hardtanh", "leakyrelu", "elu", "gelu", "silu", "sigmoid", "tanh"}
    | {"hardswish", "hardsigmoid", "mish", "softplus", "clamp", "clampmin", "clampmax", "neg", "clone", "alias"}
    | {"tocopy", "add", "sub", "mul", "div", "maxpool2dwithindices", "maxpool3dwithindices"}
)


@dataclass(frozen=True)
class ZeroFilters:
    """Output channels (filters) of one conv or linear layer whose weights are all zero."""

    layer: str
    channels: int
    zero: tuple[int, ...]


@dataclass(frozen=True)
class ShrinkReport:
    """What :func:`shrink_model` did: channels removed per group (named by its first producer conv), sizes, parity.

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
class _Plan:
    """The channels of one group to remove, and what each consumer's bias gains from the folded constants."""

    group: ChannelGroup
    remove: list[int] = field(default_factory=list)
    fold: dict[str, Tensor] = field(default_factory=dict)


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
        inputs: example batches; the graph is traced on the first, parity is checked on each, FLOPs on the
            first one's shape.
        components: module fqn -> component name; a group may not cross components. ``None`` allows any.
        atol: largest absolute output difference accepted between the shrunk and the original model.
    """
    original = model
    was_training = original.training
    original.eval()
    try:
        params, flops = count_params(original), count_flops(original, inputs[0])

        def unchanged(kept: nn.Module, reason: str, diff: float = 0.0) -> tuple[nn.Module, ShrinkReport]:
            return kept, ShrinkReport({}, params, params, flops, flops, diff, reason)

        try:
            work = copy.deepcopy(original).eval()
        except Exception as exc:  # a user's module may hold anything
            return unchanged(original, f"shrink not possible for this model (cannot copy it: {_first_line(exc)})")
        plans, problem = _plans(work, inputs[0], components)
        if problem:
            return unchanged(work, f"shrink not possible for this model ({problem})")
        if not plans:
            return unchanged(work, "no removable channels")
        try:
            shrunk, plans = _remove(work, plans, inputs[0])
        except Exception as exc:  # Torch-Pruning may refuse a removal; never hand out a half-done model
            return unchanged(work, f"shrink not possible for this model (channel removal failed: {_first_line(exc)})")
        diff = _max_output_diff(original, shrunk, inputs)
        if not diff <= atol:
            reason = f"shrink not possible for this model (outputs moved by {diff:.3g} > {atol:g}; left unchanged)"
            return unchanged(work, reason, diff)
        removed = {plan.group.root: len(plan.remove) for plan in plans}
        after = ShrinkReport(removed, params, count_params(shrunk), flops, count_flops(shrunk, inputs[0]), diff)
        return shrunk, after
    finally:
        original.train(was_training)


# --- planning --------------------------------------------------------------------------------------


def _plans(model: nn.Module, example: Tensor, components: Mapping[str, str] | None) -> tuple[list[_Plan], str]:
    """The plans of every trusted group with something to remove, or an empty list and why nothing was traced."""
    try:
        fx.symbolic_trace(model)
    except Exception as exc:  # fx raises anything from a user's forward
        return [], f"torch.fx cannot trace it: {_first_line(exc)}"
    try:
        flows = channel_flows(model, example)
    except Exception as exc:  # ExportError for an untraceable model; Torch-Pruning may raise anything else
        return [], _first_line(exc).removeprefix("ExportError: ")
    modules = dict(model.named_modules())
    tied = _tied_modules(modules)
    trusted = [(g, f) for g, f in flows if _trusted(modules, g, tied, components)]
    read = {s.module for g, _ in trusted for s in g.slices if s.kind in ("in_channels", "depthwise")}
    measured = _measure(model, read, example)
    plans = [_plan(modules, group, {n.name: n for n in flow}, measured) for group, flow in trusted]
    return [plan for plan in plans if plan.remove], ""


def _trusted(
    modules: Mapping[str, nn.Module], group: ChannelGroup, tied: set[str], components: Mapping[str, str] | None
) -> bool:
    """Whether every coupled module is a plain torch layer, untied, and the group stays inside one component."""
    for s in group.slices:
        module = modules[s.module]
        if type(module) not in _TRUSTED or module._forward_hooks or module._forward_pre_hooks or s.module in tied:
            return False
        if isinstance(module, _NORMS) and not (module.track_running_stats and module.running_var is not None):
            return False
    if components is None:
        return True
    owners = {components.get(s.module) for s in group.slices if isinstance(modules[s.module], (*_CONVS, nn.Linear))}
    return len(owners) == 1 and None not in owners


def _tied_modules(modules: Mapping[str, nn.Module]) -> set[str]:
    """The modules holding a parameter that another module also holds (tied weights)."""
    holders: dict[int, list[str]] = {}
    for name, module in modules.items():
        for param in module._parameters.values():
            if param is not None:
                holders.setdefault(id(param), []).append(name)
    return {name for names in holders.values() if len(names) > 1 for name in names}


def _measure(model: nn.Module, names: set[str], example: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per named module, the smallest and largest value of each input channel in one forward on ``example``."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def recorder(name: str, dim: int) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def record(_module: nn.Module, args: tuple[object, ...]) -> None:
            if args and isinstance(args[0], Tensor) and args[0].dim() > 1:
                flat = args[0].detach().movedim(dim, 0).reshape(args[0].shape[dim], -1).double()
                seen[name] = (flat.amin(dim=1), flat.amax(dim=1))

        return record

    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_pre_hook(recorder(n, -1 if isinstance(modules[n], nn.Linear) else 1))
        for n in sorted(names)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _plan(
    modules: Mapping[str, nn.Module],
    group: ChannelGroup,
    flow: Mapping[str, FlowNode],
    measured: Mapping[str, tuple[Tensor, Tensor]],
) -> _Plan:
    """The channels of ``group`` every consumer provably gets nothing from, and the bias folds that takes."""
    uniform = _Uniform(modules, group, flow, measured)
    removable = torch.ones(group.channels, dtype=torch.bool)
    folds: list[tuple[CoupledSlice, Tensor]] = []
    for s in group.slices:
        if s.kind != "in_channels":
            continue
        consumer = modules[s.module]
        weight = _weight(consumer)
        roots, feats = _index(s.root_channels), _index(s.channels)
        unused = _zero_rows(weight.transpose(0, 1))[feats]
        known = uniform.input_of(s.module)[roots]
        low, high = _range(measured, s.module, weight.shape[1])
        value = low[feats]
        known &= (value == high[feats]) & value.isfinite()
        zero = known & (value == 0)
        fold = known & ~zero & ~unused & _foldable(consumer)
        removable &= _per_root(group.channels, roots, unused | zero | fold)
        folds.append((s, torch.where(fold, value, torch.zeros_like(value))))
    remove = [int(c) for c in torch.nonzero(removable).reshape(-1)]
    if len(remove) == group.channels:  # a conv needs one channel left; keep the first, unfolded
        remove.pop(0)
    plan = _Plan(group, remove)
    gone = torch.zeros(group.channels, dtype=torch.bool)
    gone[remove] = True
    for s, value in folds:
        value = torch.where(gone[_index(s.root_channels)], value, torch.zeros_like(value))
        if bool((value != 0).any()):
            weight = _weight(modules[s.module]).double()
            sums = weight.transpose(0, 1).reshape(weight.shape[1], weight.shape[0], -1).sum(dim=2)  # [in, out]
            delta = (value[:, None] * sums[_index(s.channels)]).sum(dim=0)
            plan.fold[s.module] = plan.fold.get(s.module, torch.zeros_like(delta)) + delta
    return plan


class _Uniform:
    """Per flow node, which of the group's channels are provably uniform and input-independent at its output."""

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        group: ChannelGroup,
        flow: Mapping[str, FlowNode],
        measured: Mapping[str, tuple[Tensor, Tensor]],
    ) -> None:
        self.modules, self.group, self.flow, self.measured = modules, group, flow, measured
        self.slices: dict[str, dict[str, CoupledSlice]] = {}
        for s in group.slices:
            self.slices.setdefault(s.module, {})[s.kind] = s
        self.memo: dict[str | None, Tensor] = {}

    def none(self) -> Tensor:
        return torch.zeros(self.group.channels, dtype=torch.bool)

    def input_of(self, name: str) -> Tensor:
        node = self.flow.get(name)
        return self.at(node.inputs[0]) if node is not None and len(node.inputs) == 1 else self.none()

    def at(self, name: str | None) -> Tensor:
        if name not in self.memo:
            self.memo[name] = self.none()  # a cycle (never in a traced graph) proves nothing
            node = self.flow.get(name) if name is not None else None
            if node is None or (node.op != "module" and node.op not in _UNIFORM_OPS):
                result = self.none()
            elif node.op == "module":
                result = self._module(node)
            else:
                inputs = [i for i in node.inputs if i is not None or node.op != "concat"]  # concat: others' channels
                result = self.none() if not inputs or None in inputs else self._all(inputs)
            self.memo[name] = result
        return self.memo[name]

    def _all(self, names: Sequence[str | None]) -> Tensor:
        result = torch.ones(self.group.channels, dtype=torch.bool)
        for name in names:
            result &= self.at(name)
        return result

    def _module(self, node: FlowNode) -> Tensor:
        kinds, module = self.slices.get(node.name, {}), self.modules[node.name]
        if "out_channels" in kinds:  # a producer with a zero filter outputs its bias, whatever it reads
            s = kinds["out_channels"]
            dead = _zero_rows(_weight(module))[_index(s.channels)]
            return _per_root(self.group.channels, _index(s.root_channels), dead)
        if "depthwise" in kinds:
            s = kinds["depthwise"]
            roots, chans = _index(s.root_channels), _index(s.channels)
            weight = _weight(module)
            low, high = _range(self.measured, node.name, weight.shape[0])
            zero_in = (low[chans] == 0) & (high[chans] == 0)
            passes = self.input_of(node.name)[roots] & (zero_in | _foldable(module))
            return _per_root(self.group.channels, roots, _zero_rows(weight)[chans] | passes)
        if "batchnorm" in kinds or "prelu" in kinds:  # point-wise in eval mode
            return self.input_of(node.name)
        return self.none()


def _index(values: Sequence[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def _range(measured: Mapping[str, tuple[Tensor, Tensor]], name: str, channels: int) -> tuple[Tensor, Tensor]:
    """The measured input range of a module per channel; NaN (nothing known) if it was not measured."""
    unknown = torch.full((channels,), math.nan, dtype=torch.float64)
    return measured.get(name, (unknown, unknown))


def _per_root(channels: int, roots: Tensor, ok: Tensor) -> Tensor:
    """Per root channel: whether ``ok`` holds at every position ``roots`` maps it to (vacuously true elsewhere)."""
    result = torch.ones(channels, dtype=torch.bool)
    result[roots[~ok]] = False
    return result


def _weight(module: nn.Module) -> Tensor:
    return cast(Tensor, module.weight).detach()  # a trusted conv / linear / BatchNorm / PReLU


def _zero_rows(weight: Tensor) -> Tensor:
    return (weight.detach().reshape(weight.shape[0], -1) == 0).all(dim=1)


def _foldable(module: nn.Module) -> bool:
    """Whether a uniform input stays uniform at every output position: no zero padding meets it."""
    if not isinstance(module, _CONVS):
        return True  # a Linear
    if module.padding_mode != "zeros":
        return True  # reflect / replicate / circular padding of a constant is that constant
    if isinstance(module.padding, str):
        return module.padding == "valid" or all(k == 1 for k in module.kernel_size)
    return all(p == 0 for p in module.padding)


# --- surgery ---------------------------------------------------------------------------------------


def _remove(model: nn.Module, plans: list[_Plan], example: Tensor) -> tuple[nn.Module, list[_Plan]]:
    """A shrunk copy of ``model`` and the plans it carries out: all of them, or, when that fails (a buffer the
    graph does not couple, say, has the old channel count), those that succeed on their own; raises if none does.
    """
    try:
        return _apply(copy.deepcopy(model), plans, example).eval(), plans
    except Exception:  # Torch-Pruning raises anything on a removal it cannot carry out
        if len(plans) == 1:
            raise
    fine = []
    for plan in plans:
        try:
            _apply(copy.deepcopy(model), [plan], example)
        except Exception:  # as above: this group cannot go
            continue
        fine.append(plan)
    if not fine:
        return _remove(model, plans[:1], example)  # raises the first group's own error
    return _apply(copy.deepcopy(model), fine, example).eval(), fine


def _apply(model: nn.Module, plans: Sequence[_Plan], example: Tensor) -> nn.Module:
    """Fold the constants into the consumers' biases of ``model`` (in place), then remove the channels."""
    folds: dict[str, Tensor] = {}
    for plan in plans:
        for name, delta in plan.fold.items():
            folds[name] = folds.get(name, torch.zeros_like(delta)) + delta
    with torch.no_grad():
        for name, delta in folds.items():
            consumer = cast("_Conv | nn.Linear", model.get_submodule(name))
            weight = consumer.weight
            if consumer.bias is None:
                zeros = torch.zeros(delta.shape, dtype=weight.dtype, device=weight.device)
                consumer.bias = nn.Parameter(zeros, requires_grad=weight.requires_grad)
            bias = consumer.bias
            bias.copy_(bias.detach().double() + delta.to(bias.device))
    keep = {plan.group.root: [c for c in range(plan.group.channels) if c not in set(plan.remove)] for plan in plans}
    return remove_channels(model, example, keep)


# --- parity ----------------------------------------------------------------------------------------


def _max_output_diff(original: nn.Module, shrunk: nn.Module, inputs: Sequence[Tensor]) -> float:
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            want, got = tensor_leaves(original(x)), tensor_leaves(shrunk(x))
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
