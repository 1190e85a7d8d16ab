"""Contract test over the method registry, plus what each family promises (exact target, exact zeros)."""

from __future__ import annotations

import typing

import pytest
import torch
from tiny_models import HardShared
from torch import nn
from torch.nn.utils import parametrize

from adapmtl_cli.config import PruneConfig
from adapmtl_cli.methods import (
    DEFAULT_WEIGHTING,
    METHODS,
    STRUCTURES,
    MethodContext,
    allocation_name,
    build_pruner,
    check_method_options,
)
from adapmtl_cli.methods.base import Pruner
from adapmtl_cli.model.discover import discover_components
from adapmtl_cli.sparsity.masks import inject_masks_, keep_top_
from adapmtl_cli.tasks import get_task

TASKS = {"segmentation": get_task("segmentation", num_classes=13), "depth": get_task("depth")}


def _batch(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 48, generator=g)
    y = {
        "segmentation": torch.randint(-1, 13, (2, 32, 48), generator=g),
        "depth": torch.rand(2, 1, 32, 48, generator=g) + 0.5,
    }
    return x, y


def _losses(module: nn.Module, batch: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    x, y = batch
    out = module(x)
    return {t: spec.loss(out[t], y[t]) for t, spec in TASKS.items()}


def _context(sparsity: float, steps: int, structure: str | None = None) -> MethodContext:
    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    x, _ = _batch(0)
    out = model(x)
    cmap = discover_components(model, {t: out[t] for t in TASKS}, list(TASKS))
    return MethodContext(
        model=model,
        cmap=cmap,
        sparsity=sparsity,
        steps=steps,
        ramp_end=0.75,
        calibration=lambda: iter([_batch(1), _batch(2)]),
        task_losses=_losses,
        structure=structure,
        example_input=x,
    )


def _run(pruner: Pruner, steps: int) -> float:
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    sparsity = 0.0
    for step in range(1, steps + 1):
        loss = sum(_losses(pruner.module, _batch(step)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsity = pruner.after_step_(step)
    return sparsity


def test_config_accepts_exactly_the_registered_methods() -> None:
    annotation = PruneConfig.model_fields["method"].annotation
    assert set(typing.get_args(annotation)) == set(METHODS)
    assert set(DEFAULT_WEIGHTING) == set(METHODS)
    assert DEFAULT_WEIGHTING["adapmtl"] == "norm"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_builds_with_the_allocation_the_registry_reports(name: str) -> None:
    """``allocation_name`` (what reports and the benchmark key record) is what the factory really builds."""
    pruner = build_pruner(name, _context(0.5, 4))
    assert getattr(pruner, "allocation", None) == allocation_name(name, None)
    assert allocation_name("adapmtl", None) == "marginal" and allocation_name("str_global", None) == "adam"


def test_unknown_method_lists_the_known_ones() -> None:
    from adapmtl_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method 'nope'.*adapmtl"):
        build_pruner("nope", _context(0.5, 4))


WEIGHT_METHODS = sorted(m for m, s in STRUCTURES.items() if "weight" in s)
CHANNEL_METHODS = sorted(m for m, s in STRUCTURES.items() if "channel" in s)


def test_every_method_prunes_weights_or_channels() -> None:
    assert set(STRUCTURES) == set(METHODS)
    assert all(s and set(s) <= {"weight", "channel"} for s in STRUCTURES.values())
    assert CHANNEL_METHODS == ["adapmtl", "tp_magnitude", "tp_taylor"]


@pytest.mark.parametrize("name", CHANNEL_METHODS)
def test_the_registry_refuses_a_target_the_channel_method_cannot_count_before_any_model_is_built(name: str) -> None:
    from adapmtl_cli.errors import ConfigError
    from adapmtl_cli.methods.registry import CHANNEL_TARGETS

    assert set(CHANNEL_TARGETS) == set(CHANNEL_METHODS) and all("channels" in t for t in CHANNEL_TARGETS.values())
    options = {"layer_scale": None, "bounds": None, "sizes": {"backbone": 10}, "sparsity": 0.5}
    for target in ("channels", "flops"):
        if target in CHANNEL_TARGETS[name]:
            check_method_options(name, structure="channel", target=target, **options)  # type: ignore[arg-type]
        else:
            with pytest.raises(ConfigError, match=f"--target {target} needs learned thresholds"):
                check_method_options(name, structure="channel", target=target, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", CHANNEL_METHODS)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_every_channel_method_lands_exactly_on_the_channel_target(name: str, sparsity: float) -> None:
    steps = 8
    pruner = build_pruner(name, _context(sparsity, steps, "channel"))
    grouped = [id(p) for g in pruner.param_groups(1e-3, 1e-2) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in pruner.module.parameters() if p.requires_grad)
    achieved = _run(pruner, steps)
    channels = sum(n for n, _ in pruner.cm.component_channels().values())  # type: ignore[attr-defined]
    # every channel method: groups of 8+ channels keep multiples of KEEP_MULTIPLE, the closest count to the target
    from adapmtl_cli.methods.channel_pruner import _removable
    from adapmtl_cli.sparsity.channel_gates import KEEP_MULTIPLE

    # each group keeps at least its strongest chunk (or channel): the target or the most that allows
    sizes = [g.group.channels for g in pruner.cm.gated]  # type: ignore[attr-defined]
    want = min(round(sparsity * channels), sum(max(_removable(n, KEEP_MULTIPLE)) for n in sizes))
    assert abs(achieved * channels - want) <= KEEP_MULTIPLE / 2
    for g in pruner.cm.gated:  # type: ignore[attr-defined]
        kept = len(pruner.cm.keep_lists()[g.group.root])  # type: ignore[attr-defined]
        assert g.group.channels < 2 * KEEP_MULTIPLE or kept % KEEP_MULTIPLE == 0 or kept == g.group.channels
        assert kept >= 1  # no group is cut off
    stats = pruner.measure()
    x, _ = _batch(9)
    pruner.module.eval()
    with torch.no_grad():
        before = pruner.module(x)
    model = pruner.bake_()
    with torch.no_grad():
        after = model(x)
    for t in TASKS:
        torch.testing.assert_close(after[t], before[t], rtol=0, atol=1e-6)
    mods = dict(model.named_modules())
    for s in stats:
        assert not parametrize.is_parametrized(mods[s.fqn])
        assert int((mods[s.fqn].weight == 0).sum()) == s.zeros


@pytest.mark.parametrize("name", WEIGHT_METHODS)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_every_method_lands_exactly_on_the_target(name: str, sparsity: float) -> None:
    steps = 8
    pruner = build_pruner(name, _context(sparsity, steps, "weight"))
    assert isinstance(pruner, Pruner)
    assert pruner.name == name
    # every trainable parameter is optimised exactly once
    grouped = [id(p) for g in pruner.param_groups(1e-3, 1e-2) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in pruner.module.parameters() if p.requires_grad)
    assert pruner.target_at(steps) == sparsity
    achieved = _run(pruner, steps)
    assert abs(achieved - sparsity) <= 0.001
    stats = pruner.measure()
    total = sum(s.params for s in stats)
    assert abs(sum(s.zeros for s in stats) / total - sparsity) <= 0.001
    model = pruner.bake_()
    mods = dict(model.named_modules())
    for s in stats:
        assert not parametrize.is_parametrized(mods[s.fqn])
        w = mods[s.fqn].weight
        assert int((w == 0).sum()) == s.zeros
        assert not torch.signbit(w[w == 0]).any(), "pruned weights must be +0.0"


def test_threshold_methods_differ_in_threshold_count() -> None:
    counts = {n: len(build_pruner(n, _context(0.5, 4)).thresholds()) for n in ("adapmtl", "str_global", "str_layer")}
    layers = len(_context(0.5, 4).cmap.layers)
    assert counts == {"adapmtl": 3, "str_global": 1, "str_layer": layers}


def test_uniform_magnitude_prunes_every_layer_alike() -> None:
    pruner = build_pruner("uniform_magnitude", _context(0.8, 4))
    for s in pruner.measure():
        assert abs(s.zeros / s.params - 0.8) <= 1 / s.params


def test_gradual_magnitude_follows_the_cubic_ramp() -> None:
    pruner = build_pruner("gmp", _context(0.9, 20))
    assert pruner.target_at(0) == 0.0
    assert 0.0 < pruner.target_at(5) < pruner.target_at(10) < 0.9
    opt = torch.optim.Adam(pruner.param_groups(1e-3, 1e-2))
    seen = []
    for step in range(1, 21):
        loss = sum(_losses(pruner.module, _batch(step)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(pruner.after_step_(step))
    assert seen == sorted(seen), "masks only grow"
    assert abs(seen[-1] - 0.9) <= 0.001


def test_disparse_keeps_what_one_task_needs() -> None:
    ctx = _context(0.9, 4)
    pruner = build_pruner("disparse", ctx)
    by_component: dict[str, list[int]] = {}
    for s in pruner.measure():
        acc = by_component.setdefault(s.group, [0, 0])
        acc[0] += s.zeros
        acc[1] += s.params
    # each head keeps its own task's most important weights: no head is emptied
    for name, (zeros, n) in by_component.items():
        assert zeros < n, name


def test_disparse_without_calibration_data_is_a_config_error() -> None:
    from dataclasses import replace

    from adapmtl_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="disparse"):
        build_pruner("disparse", replace(_context(0.5, 4), calibration=None))


def test_keep_top_keeps_an_exact_count_even_with_ties() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    out = model(torch.rand(1, 3, 8, 8))
    cmap = discover_components(model, {"depth": out}, ["depth"])
    mm = inject_masks_(model, cmap)
    scores = {f: torch.ones_like(mm.raw_weight(f)) for f in mm.groups}
    keep_top_(mm, scores, 37)
    assert sum(int(mm.mask(f).sum()) for f in mm.groups) == 37
