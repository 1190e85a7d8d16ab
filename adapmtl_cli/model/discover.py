"""Find the backbone, each task's head and shared branches from the model's own autograd graph.

One forward pass on a real batch; for each task output, ``torch.autograd.grad(out.float().sum(), params,
allow_unused=True)`` says which parameters it reaches (``None`` = not connected: structural, not numeric). A
parameter reached by every task is *backbone*, by one task that task's *head*, by a subset a *shared* branch.
This works for hard sharing, task attention inside an encoder and branched trees without name conventions.
Parameters reached by no task are reported and never pruned. ``--backbone GLOB`` / ``--head TASK=GLOB`` override.

**Tied weights.** One tensor may be the weight of several layers (weight tying: ``b.weight = a.weight``).
``named_parameters`` lists it once, under its first holder in module order, so it is reached, counted and
pruned as that layer's weight: the first holder is the prunable :class:`Layer`, the others are its aliases
(``ComponentMap.tied``), which the parametrizations give the very same pruned value. A tensor tied to anything
but the ``weight`` of a prunable layer (an embedding, a bias), or whose holders an ``--exclude`` glob names, is
excluded as a whole: pruning it through one holder would change the others behind their back.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from adapmtl_cli.errors import ConfigError, DiscoveryError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


@dataclass(frozen=True)
class Layer:
    """One prunable weight: the module's fqn, its component and its element count."""

    fqn: str
    component: str
    params: int
    kind: str


@dataclass(frozen=True)
class Component:
    """A group of modules reached by the same set of tasks."""

    name: str
    kind: str
    """``backbone``, ``head`` or ``shared``."""
    tasks: tuple[str, ...]
    modules: tuple[str, ...]
    params: int
    prunable_params: int
    prefix: str


@dataclass(frozen=True)
class ComponentMap:
    """The discovery result: components, prunable layers, and what was left out and why."""

    tasks: tuple[str, ...]
    components: tuple[Component, ...]
    layers: tuple[Layer, ...]
    unreached: tuple[str, ...]
    excluded: tuple[str, ...]
    overrides: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    """Alias layer fqn -> the layer whose weight it holds (tied weights): pruned, counted and saved once."""

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    @property
    def prunable_params(self) -> int:
        return sum(layer.params for layer in self.layers)


def component_name(tasks: Sequence[str], all_tasks: Sequence[str]) -> tuple[str, str]:
    """(name, kind) for the set of tasks that reach a parameter."""
    if set(tasks) == set(all_tasks):
        return "backbone", "backbone"
    if len(tasks) == 1:
        return f"head:{tasks[0]}", "head"
    return "shared:" + "+".join(sorted(tasks)), "shared"


def _common_prefix(names: Sequence[str]) -> str:
    if not names:
        return ""
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        prefix.append(group[0])
    return ".".join(prefix)


def _matches(fqn: str, patterns: Sequence[str]) -> bool:
    # A glob naming a module also covers its submodules: "heads.seg" matches "heads.seg.0.conv".
    return any(fnmatch.fnmatchcase(fqn, p) or fnmatch.fnmatchcase(fqn, p + ".*") for p in patterns)


def parameter_holders(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """``id(parameter) -> [(module fqn, parameter name), ...]`` in module order; tied ones have several holders."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for mname, module in model.named_modules():
        for pname, param in module._parameters.items():
            if param is not None:
                holders.setdefault(id(param), []).append((mname, pname))
    return holders


def reachability(model: nn.Module, outputs: dict[str, torch.Tensor], tasks: Sequence[str]) -> dict[str, frozenset[str]]:
    """For every trainable parameter fqn, the tasks whose output depends on it through autograd."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise DiscoveryError("the model has no trainable parameters; nothing to prune")
    reached: dict[str, set[str]] = {n: set() for n, _ in named}
    params = [p for _, p in named]
    for i, task in enumerate(tasks):
        out = outputs[task]
        if not out.requires_grad:
            raise DiscoveryError(
                f"output for task {task!r} does not depend on any parameter (was it computed under no_grad or "
                "detached?); forward must stay differentiable"
            )
        grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True, retain_graph=i < len(tasks) - 1)
        for (name, _), g in zip(named, grads, strict=True):
            if g is not None:
                reached[name].add(task)
    return {n: frozenset(s) for n, s in reached.items()}


def _module_tasks(
    model: nn.Module,
    reach: dict[str, frozenset[str]],
    tasks: Sequence[str],
    backbone: Sequence[str],
    heads: dict[str, list[str]],
) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """Per module with reached parameters, the tasks it serves (after the overrides), and the overrides applied."""
    module_tasks: dict[str, frozenset[str]] = {}
    overrides: dict[str, str] = {}
    for mname, module in model.named_modules():
        own = [f"{mname}.{pn}" if mname else pn for pn, _ in module.named_parameters(recurse=False)]
        own = [n for n in own if n in reach]
        if not own:
            continue
        tasks_here = frozenset().union(*(reach[n] for n in own))
        if _matches(mname, backbone):
            tasks_here = frozenset(tasks)
            overrides[mname] = "backbone"
        for task, patterns in heads.items():
            if _matches(mname, patterns):
                tasks_here = frozenset([task])
                overrides[mname] = f"head:{task}"
        module_tasks[mname] = tasks_here
    for pattern in [*backbone, *(p for ps in heads.values() for p in ps)]:
        if not any(_matches(m, [pattern]) for m in module_tasks):
            raise ConfigError(f"override glob {pattern!r} matches no module with parameters; see `adapmtl inspect`")
    return module_tasks, overrides


def _prunable_layers(
    modules: dict[str, nn.Module],
    comp_of: dict[str, str],
    holders: dict[int, list[tuple[str, str]]],
    exclude: Sequence[str],
) -> tuple[list[Layer], list[str], dict[str, str]]:
    """The prunable layers in module order, the excluded module names, and the tied aliases (alias -> owner)."""
    layers: list[Layer] = []
    excluded: list[str] = []
    tied: dict[str, str] = {}
    for mname, module in modules.items():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if getattr(module, "weight", None) is None or not isinstance(module.weight, nn.Parameter):
            continue
        group = holders[id(module.weight)]
        if len(group) > 1 and not all(isinstance(modules[m], PRUNABLE_TYPES) and pn == "weight" for m, pn in group):
            if mname in comp_of:
                excluded.append(mname)  # tied to an embedding, a bias...: left as it is
            continue
        if group[0][0] != mname or mname not in comp_of:
            continue  # an alias goes with its owner; an unreached owner is no layer
        names = [m for m, _ in group]
        if any(_matches(m, exclude) for m in names):
            excluded += names
            continue
        tied.update({alias: mname for alias in names[1:]})
        layers.append(Layer(mname, comp_of[mname], module.weight.numel(), type(module).__name__))
    return layers, excluded, tied


def discover_components(
    model: nn.Module,
    outputs: dict[str, torch.Tensor],
    tasks: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    backbone: Sequence[str] = (),
    heads: dict[str, list[str]] | None = None,
) -> ComponentMap:
    """Group the model's modules into components and list the prunable layers of each.

    Args:
        model: the model whose forward produced ``outputs`` (graph still alive).
        outputs: one tensor per task, from ``OutputMapping.select``.
        tasks: task names in dataset order.
        exclude: module globs never pruned (``--exclude``).
        backbone: module globs forced into the backbone (``--backbone``).
        heads: ``task -> module globs`` forced into that task's head (``--head``).
    """
    heads = heads or {}
    modules = dict(model.named_modules())
    module_tasks, overrides = _module_tasks(model, reachability(model, outputs, tasks), tasks, backbone, heads)

    groups: dict[str, list[str]] = {}
    kinds: dict[str, tuple[str, tuple[str, ...]]] = {}
    unreached: list[str] = []
    for mname, tasks_here in module_tasks.items():
        if not tasks_here:
            unreached.append(mname)
            continue
        ordered = tuple(t for t in tasks if t in tasks_here)
        name, kind = component_name(ordered, tasks)
        groups.setdefault(name, []).append(mname)
        kinds[name] = (kind, ordered)

    comp_of = {m: name for name, ms in groups.items() for m in ms}
    holders = parameter_holders(model)
    layers, excluded, tied = _prunable_layers(modules, comp_of, holders, exclude)
    if not layers:
        raise DiscoveryError(
            "found no prunable layer (Conv*/ConvTranspose*/Linear weights reached by a task and not excluded); "
            "check --exclude"
        )

    def order(name: str) -> tuple[int, str]:
        kind = kinds[name][0]
        return ({"backbone": 0, "shared": 1, "head": 2}[kind], name)

    components = []
    for name in sorted(groups, key=order):
        ms = groups[name]
        kind, ctasks = kinds[name]
        # A tied parameter counts once, in its first holder's component.
        params = sum(p.numel() for m in ms for p in modules[m].parameters(recurse=False) if holders[id(p)][0][0] == m)
        prunable = sum(layer.params for layer in layers if layer.component == name)
        components.append(Component(name, kind, ctasks, tuple(ms), params, prunable, _common_prefix(ms)))
    # Components with nothing to prune still appear (their parameters exist), but carry no threshold.
    return ComponentMap(
        tasks=tuple(tasks),
        components=tuple(components),
        layers=tuple(layers),
        unreached=tuple(unreached),
        excluded=tuple(excluded),
        overrides=overrides,
        tied=tied,
    )
