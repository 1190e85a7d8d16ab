"""Learnable soft thresholds on prunable weights: injection, measurement and baking.

``w_eff = sign(w) * relu(|w| - sigmoid(s_c))`` (STR, Kusupati et al. 2020, as used by AdapMTL, Xiang et al.,
ACM MM 2024) with one scalar ``s_c`` per component (backbone, each head, each shared branch). We compute it as
``w - clamp(w, -t, t)``: the same numbers bit for bit, two kernels instead of four, and a pruned weight is an
exact ``+0.0`` (never ``-0.0``). The threshold is always evaluated in fp32 (``sigmoid(-18)`` underflows in fp16).

The thresholds live once, in a ``ThresholdBank``; parametrizations only hold a reference to it, so the
state_dict has each threshold exactly once (the original code stored a copy per conv).

Tied weights (``ComponentMap.tied``: one tensor held by several layers) are parametrized once per holder with the
*same* parametrization module, so every holder computes the same pruned value from the one raw tensor; only the
owner is a layer (measured and counted once), and baking makes the holders share one plain parameter again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from adapmtl_cli.model.discover import ComponentMap, Layer

GRANULARITIES = ("component", "layer", "global")
PRUNED_GRADIENT = 0.0
"""The share of its gradient a pruned weight (``|w| <= t``) still receives: 0 is STR's and the paper's exact
gradient (a pruned weight only returns when its threshold falls below it); above 0 is a straight-through
estimate that lets pruned weights grow back past the threshold where the task loss wants them (weights swap
inside a component). A dev-split experiment (issue #13), not a default."""


def _key(name: str) -> str:
    # ParameterDict keys become attribute names: no dots, keep them readable.
    return name.replace(".", "/").replace(":", "=") or "root"


class ThresholdBank(nn.Module):
    """The learnable threshold logits ``s``, one per group (component, layer or a single global one)."""

    def __init__(self, groups: Sequence[str], init: float = -10.0) -> None:
        super().__init__()
        self.groups = list(groups)
        self.raw = nn.ParameterDict({_key(g): nn.Parameter(torch.tensor(float(init))) for g in self.groups})

    def logit(self, group: str) -> nn.Parameter:
        return cast(nn.Parameter, self.raw[_key(group)])

    def value(self, group: str) -> torch.Tensor:
        """The threshold ``sigmoid(s)`` in fp32."""
        return torch.sigmoid(self.logit(group).float())

    @torch.no_grad()
    def values(self) -> dict[str, float]:
        return {g: float(self.value(g)) for g in self.groups}

    @torch.no_grad()
    def logits(self) -> dict[str, float]:
        return {g: float(self.logit(g)) for g in self.groups}


class _SoftThresholdFn(torch.autograd.Function):
    """``w - clamp(w, -t, t)`` with a hand-written backward: the same values and gradients, less memory traffic.

    Autograd's version saves ``w`` and, in the backward, builds boolean masks (slow on the CPU) and full-size
    gradients for both of the clamp's bounds. Here the backward reads only the output ``y`` (which the next
    layer keeps anyway): with ``s = sign(y)``, nonzero exactly where ``|w| > t`` (the difference of two
    distinct floats is never zero), ``dL/dw = g * s * s`` and ``dL/dt = -sum(g * s)`` (clamp passes the
    gradient to its upper bound where ``w > t``, to its lower bound ``-t`` where ``w < -t``). A pruned weight's
    gradient may be ``-0.0`` where autograd gives ``+0.0``: equal values, and Adam's update is identical.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if weight.device.type == "cpu":
            # Scalar bounds: clamp is five times faster than with tensor bounds on the CPU (no device sync
            # here), and the subtraction can reuse the clamp's buffer.
            v = float(t)
            out = torch.clamp(weight, -v, v)
            torch.sub(weight, out, out=out)
        else:
            out = weight - torch.clamp(weight, -t, t)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (out,) = ctx.saved_tensors
        sign = out.sign()
        grad_w = grad * sign
        grad_t = -grad_w.sum()
        if PRUNED_GRADIENT:
            kept = sign * sign
            return grad * (kept + PRUNED_GRADIENT * (1 - kept)), grad_t
        return grad_w.mul_(sign), grad_t


def soft_threshold(weight: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sign(w) * relu(|w| - t)`` computed as ``w - clamp(w, -t, t)``, differentiable in ``w`` and ``t``.

    ``t`` is a 0-d tensor of ``weight``'s dtype.
    """
    return _SoftThresholdFn.apply(weight, t)


class SoftThreshold(nn.Module):
    """Parametrization ``w -> w - clamp(w, -t, t)`` with ``t = sigmoid(bank[group]) * scale``.

    ``scale`` is the layer's fixed threshold scale (1 unless the method sets layer scales, see
    ``layer_scales.py``): the group's one learnable threshold, measured in this layer's own units.
    """

    _bank: ThresholdBank
    scale: torch.Tensor

    def __init__(self, bank: ThresholdBank, group: str) -> None:
        super().__init__()
        # Not a submodule on purpose: the bank's parameters must be registered once, not once per layer.
        object.__setattr__(self, "_bank", bank)
        self.group = group
        self.register_buffer("scale", torch.ones((), dtype=torch.float32))

    def threshold(self) -> torch.Tensor:
        """This layer's threshold in fp32."""
        return self._bank.value(self.group) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return soft_threshold(weight, self.threshold().to(weight.dtype))


class ParametrizedLayers(nn.Module):
    """The user's model whose prunable layers carry a weight parametrization; shared by thresholds and masks."""

    def __init__(
        self,
        model: nn.Module,
        groups: Mapping[str, str],
        param_order: Mapping[str, list[str]] | None = None,
        tied: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.groups = dict(groups)
        """layer fqn -> group (threshold group, or component for masks)."""
        self.param_order = dict(param_order or {})
        """layer fqn -> its parameters' names in the order before the parametrization (see ``unparametrize_``)."""
        self.tied = dict(tied or {})
        """alias fqn -> owner layer fqn: aliases share the owner's weight and parametrization, and are no layer."""

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.model(*args, **kwargs)

    def layer_modules(self) -> dict[str, nn.Module]:
        # Cached: walking named_modules() on every call cost ~15% of a training step on small models.
        cache = self.__dict__.get("_layer_cache")
        if cache is None:
            mods = dict(self.model.named_modules())
            cache = {fqn: mods[fqn] for fqn in self.groups}
            self.__dict__["_layer_cache"] = cache
        return cache

    def weight_parametrization(self, fqn: str) -> parametrize.ParametrizationList:
        """The parametrization list on layer ``fqn``'s weight (``original`` is the raw weight)."""
        module: Any = self.layer_modules()[fqn]  # parametrize adds ``parametrizations`` at run time
        return cast(parametrize.ParametrizationList, module.parametrizations.weight)

    def raw_weight(self, fqn: str) -> torch.Tensor:
        return self.weight_parametrization(fqn).original

    def unparametrize_(self) -> nn.Module:
        """Make every parametrized weight a plain parameter holding its current value; returns the user's model.

        ``remove_parametrizations`` registers ``weight`` anew, after ``bias``; the original order is put back,
        so the baked model's ``state_dict`` has the user's keys in the user's order. A tied alias gets its owner's
        baked parameter itself, so the tie survives baking.
        """
        owners = self.layer_modules()
        for fqn, module in owners.items():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            _restore_order(module, self.param_order.get(fqn))
        if self.tied:
            mods = dict(self.model.named_modules())
            for alias, owner in self.tied.items():
                module = mods[alias]
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                module._parameters["weight"] = owners[owner]._parameters["weight"]
                _restore_order(module, self.param_order.get(alias))
        return self.model


def _restore_order(module: nn.Module, order: list[str] | None) -> None:
    """Put ``module``'s parameters back in ``order`` (``remove_parametrizations`` appends ``weight`` last)."""
    if order and list(module._parameters) != order:
        params = module._parameters
        keep = {k: params[k] for k in order if k in params}
        keep.update({k: v for k, v in params.items() if k not in keep})
        params.clear()
        params.update(keep)


def tie_parametrizations_(model: nn.Module, tied: Mapping[str, str]) -> None:
    """Give each tied alias its owner's parametrization module (the owner must be parametrized already)."""
    mods = dict(model.named_modules())
    for alias, owner in tied.items():
        shared = cast(Any, mods[owner]).parametrizations.weight[0]
        parametrize.register_parametrization(mods[alias], "weight", shared, unsafe=True)


def parameter_order(model: nn.Module, fqns: Sequence[str]) -> dict[str, list[str]]:
    """Per layer, its parameters' names in registration order (recorded before parametrizing it)."""
    mods = dict(model.named_modules())
    return {fqn: list(mods[fqn]._parameters) for fqn in fqns}


class ThresholdedModel(ParametrizedLayers):
    """The user's model with thresholds injected, plus the bank, as one module (so DDP sees both)."""

    def __init__(
        self,
        model: nn.Module,
        bank: ThresholdBank,
        groups: dict[str, str],
        param_order: Mapping[str, list[str]] | None = None,
        tied: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(model, groups, param_order, tied)
        self.bank = bank
        self.scaled = False
        """Whether any layer scale may differ from 1 (set by ``set_layer_scales_``; saves work when not)."""

    def soft_threshold(self, fqn: str) -> SoftThreshold:
        return cast(SoftThreshold, self.weight_parametrization(fqn)[0])

    def layer_scale(self, fqn: str) -> torch.Tensor:
        """The layer's threshold scale (a 0-d fp32 buffer, saved with the model's state)."""
        return self.soft_threshold(fqn).scale

    @torch.no_grad()
    def set_layer_scales_(self, scales: Mapping[str, float]) -> None:
        """Set the threshold scales of the named layers (the others keep theirs)."""
        for fqn, value in scales.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"layer scale of {fqn} must be a positive number, got {value}")
            self.layer_scale(fqn).fill_(value)
        self.scaled = self.scaled or any(v != 1.0 for v in scales.values())

    def scaled_magnitudes(self, fqn: str) -> torch.Tensor:
        """``|w| / scale`` in fp32: the magnitudes the group's threshold is compared with."""
        mags = self.raw_weight(fqn).detach().abs().float()
        return mags.div_(self.layer_scale(fqn)) if self.scaled else mags


def group_of(layer: Layer, granularity: str) -> str:
    if granularity == "component":
        return layer.component
    if granularity == "layer":
        return layer.fqn
    if granularity == "global":
        return "global"
    raise ValueError(f"unknown granularity {granularity!r}")


def inject_thresholds_(model: nn.Module, cmap: ComponentMap, granularity: str = "component") -> ThresholdedModel:
    """Parametrize the weight of every prunable layer in ``cmap``; return the wrapper holding the bank."""
    groups = {layer.fqn: group_of(layer, granularity) for layer in cmap.layers}
    bank = ThresholdBank(list(dict.fromkeys(groups.values())))
    order = parameter_order(model, [*groups, *cmap.tied])
    mods = dict(model.named_modules())
    for fqn, group in groups.items():
        parametrize.register_parametrization(mods[fqn], "weight", SoftThreshold(bank, group), unsafe=True)
    tie_parametrizations_(model, cmap.tied)
    return ThresholdedModel(model, bank, groups, order, cmap.tied)


@torch.no_grad()
def init_thresholds_(tm: ThresholdedModel, sparsity: float, *, per_group: bool = False) -> None:
    """Set the thresholds from the weights' own magnitudes.

    ``per_group=False``: every threshold is the global magnitude quantile ``sparsity`` of all prunable weights
    (one common threshold, as STR's constant initialisation). ``per_group=True``: each group's threshold is the
    ``sparsity`` quantile of its own weights, so every component starts scale-normalised (equally sparse at the
    target level) instead of the small-magnitude backbone being pruned hardest; AdapMTL's default. The level
    controller later rescales all thresholds together, so only their ratios matter.
    """
    q = min(max(sparsity, 1e-4), 1 - 1e-4)

    def quantile(fqns: list[str]) -> float:
        mags = torch.cat([tm.scaled_magnitudes(f).flatten() for f in fqns])
        t = float(mags.kthvalue(max(1, int(round(q * mags.numel())))).values)
        return min(max(t, 1e-12), 1 - 1e-6)

    common = None if per_group else quantile(list(tm.groups))
    for g in tm.bank.groups:
        t = common if common is not None else quantile([f for f, gg in tm.groups.items() if gg == g])
        tm.bank.logit(g).fill_(math.log(t) - math.log1p(-t))


@dataclass(frozen=True)
class LayerZeros:
    fqn: str
    group: str
    params: int
    zeros: int
    threshold: float | None = None
    """The layer's own threshold (its group's times its scale), for threshold methods."""


@torch.no_grad()
def measure_layers(tm: ThresholdedModel) -> list[LayerZeros]:
    """Exact zero count of every thresholded weight, as the forward pass would produce it."""
    out = []
    counts, thresholds = [], []
    for fqn in tm.groups:
        w = tm.raw_weight(fqn)
        t = tm.soft_threshold(fqn).threshold().to(w.dtype)
        counts.append((w.abs() <= t).sum())
        thresholds.append(t.float())
    # One device->host transfer each for all layers instead of one per layer.
    values = torch.stack(counts).tolist() if counts else []
    ts = torch.stack(thresholds).tolist() if thresholds else []
    for (fqn, group), zeros, t in zip(tm.groups.items(), values, ts, strict=True):
        out.append(LayerZeros(fqn, group, tm.raw_weight(fqn).numel(), int(zeros), t))
    return out


def overall_sparsity(layers: Sequence[LayerZeros]) -> float:
    total = sum(x.params for x in layers)
    return sum(x.zeros for x in layers) / total if total else 0.0


@torch.no_grad()
def bake_(tm: ThresholdedModel) -> nn.Module:
    """Replace every parametrized weight by its thresholded value (exact zeros, shrunk survivors).

    The baked model computes exactly the function the thresholded model computed. Returns the user's model.
    """
    return tm.unparametrize_()
