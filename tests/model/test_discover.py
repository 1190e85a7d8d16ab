"""Component discovery from autograd reachability: one test per sharing topology, then overrides and counts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from tiny_models import HardShared
from torch import Tensor, nn

from adapmtl_cli.errors import ConfigError, DiscoveryError
from adapmtl_cli.jobs.prepare import parse_head_overrides
from adapmtl_cli.model.discover import ComponentMap, component_name, discover_components

TASKS = ("segmentation", "depth", "normal")
HARD_SHARED_LAYERS = {
    "encoder.0.0": "backbone",
    "encoder.1.0": "backbone",
    "encoder.2.0": "backbone",
    "heads.segmentation.0": "head:segmentation",
    "heads.segmentation.2": "head:segmentation",
    "heads.depth.0": "head:depth",
    "heads.depth.2": "head:depth",
    "heads.normal.0": "head:normal",
    "heads.normal.2": "head:normal",
}


def _discover(model: nn.Module, images: Tensor, tasks: Sequence[str] = TASKS, **kwargs: object) -> ComponentMap:
    return discover_components(model, model(images), tasks, **kwargs)  # type: ignore[arg-type]


def _layers(cmap: ComponentMap) -> dict[str, str]:
    return {layer.fqn: layer.component for layer in cmap.layers}


def _modules(cmap: ComponentMap) -> dict[str, tuple[str, ...]]:
    return {c.name: c.modules for c in cmap.components}


def test_hard_shared(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(hard_shared, tiny_images)
    assert [(c.name, c.kind, c.tasks) for c in cmap.components] == [
        ("backbone", "backbone", TASKS),
        ("head:depth", "head", ("depth",)),
        ("head:normal", "head", ("normal",)),
        ("head:segmentation", "head", ("segmentation",)),
    ]
    assert _modules(cmap)["backbone"] == tuple(f"encoder.{i}.{j}" for i in range(3) for j in range(2))
    assert _modules(cmap)["head:depth"] == ("heads.depth.0", "heads.depth.2")
    assert cmap.component("backbone").prefix == "encoder"
    assert cmap.component("head:normal").prefix == "heads.normal"
    assert _layers(cmap) == HARD_SHARED_LAYERS
    assert all(layer.kind == "Conv2d" for layer in cmap.layers)
    assert cmap.unreached == () and cmap.excluded == () and cmap.overrides == {}


def test_branched(branched: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(branched, tiny_images)
    assert [c.name for c in cmap.components] == [
        "backbone",
        "shared:depth+segmentation",
        "head:depth",
        "head:normal",
        "head:segmentation",
    ]
    shared = cmap.component("shared:depth+segmentation")
    assert shared.kind == "shared" and shared.tasks == ("segmentation", "depth")
    assert shared.modules == ("branch_a.0.0", "branch_a.0.1", "branch_a.1.0", "branch_a.1.1")
    assert cmap.component("backbone").modules == ("stem.0", "stem.1")
    assert cmap.component("head:normal").modules == ("branch_b.0", "branch_b.1", "heads.normal.0", "heads.normal.2")
    assert _layers(cmap)["branch_b.0"] == "head:normal"


def test_task_attention(task_attention: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(task_attention, tiny_images)
    assert cmap.component("backbone").modules == (
        "encoder.stem.0",
        "encoder.stem.1",
        "encoder.block.0",
        "encoder.block.1",
    )
    for task in TASKS:
        head = cmap.component(f"head:{task}")
        assert head.modules[:2] == (f"encoder.att.{task}.0", f"encoder.att.{task}.1")
        assert _layers(cmap)[f"encoder.att.{task}.0"] == f"head:{task}"


def test_linear_layer_is_prunable_in_its_head(with_linear: nn.Module, tiny_images: Tensor) -> None:
    layer = next(layer for layer in _discover(with_linear, tiny_images).layers if layer.fqn == "heads.normal.fc")
    assert (layer.component, layer.kind, layer.params) == ("head:normal", "Linear", 8 * 3)


def test_subset_of_tasks(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(hard_shared, tiny_images, tasks=("depth", "normal"))
    assert [c.name for c in cmap.components] == ["backbone", "head:depth", "head:normal"]
    assert cmap.unreached == ("heads.segmentation.0", "heads.segmentation.2")
    assert not any(layer.fqn.startswith("heads.segmentation") for layer in cmap.layers)


# --- exclusions and overrides --------------------------------------------------------------------


def test_exclude_glob_covers_submodules(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(hard_shared, tiny_images, exclude=["heads.segmentation", "encoder.*.0"])
    assert cmap.excluded == (
        "encoder.0.0",
        "encoder.1.0",
        "encoder.2.0",
        "heads.segmentation.0",
        "heads.segmentation.2",
    )
    assert set(_layers(cmap)) == {"heads.depth.0", "heads.depth.2", "heads.normal.0", "heads.normal.2"}
    assert cmap.component("backbone").prunable_params == 0
    assert cmap.component("backbone").params > 0  # still listed: its parameters exist


def test_exclude_name_prefix_does_not_match_other_modules(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(hard_shared, tiny_images, exclude=["heads.seg", "heads.depth.0"])
    assert cmap.excluded == ("heads.depth.0",)


def test_excluding_everything_is_an_error(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    with pytest.raises(DiscoveryError, match="--exclude"):
        _discover(hard_shared, tiny_images, exclude=["*"])


def test_backbone_override(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    cmap = _discover(hard_shared, tiny_images, backbone=["heads.depth"])
    assert "head:depth" not in [c.name for c in cmap.components]
    assert _layers(cmap)["heads.depth.0"] == "backbone" and _layers(cmap)["heads.depth.2"] == "backbone"
    assert cmap.overrides == {"heads.depth.0": "backbone", "heads.depth.2": "backbone"}


def test_head_override(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    heads = parse_head_overrides(["seg=encoder.2"], TASKS)
    assert heads == {"segmentation": ["encoder.2"]}
    cmap = _discover(hard_shared, tiny_images, heads=heads)
    assert cmap.component("head:segmentation").modules[:2] == ("encoder.2.0", "encoder.2.1")
    assert "encoder.2.0" not in cmap.component("backbone").modules
    assert _layers(cmap)["encoder.2.0"] == "head:segmentation"
    assert cmap.overrides == {"encoder.2.0": "head:segmentation", "encoder.2.1": "head:segmentation"}


@pytest.mark.parametrize("kwargs", [{"backbone": ["decoder.*"]}, {"heads": {"depth": ["heads.albedo"]}}])
def test_override_matching_nothing(hard_shared: nn.Module, tiny_images: Tensor, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="matches no module"):
        _discover(hard_shared, tiny_images, **kwargs)


@pytest.mark.parametrize(
    ("value", "expected"), [("segmentation", "TASK=GLOB"), ("seg=", "TASK=GLOB"), ("albedo=x", "'albedo'")]
)
def test_bad_head_override(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_head_overrides([value], TASKS)


# --- unreached modules and counts ----------------------------------------------------------------


class _WithUnused(HardShared):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Conv2d(16, 4, 3)
        self.unused_fc = nn.Linear(4, 4)


def test_unused_module_is_unreached_and_not_pruned(tiny_images: Tensor) -> None:
    torch.manual_seed(0)
    cmap = _discover(_WithUnused(), tiny_images)
    assert cmap.unreached == ("unused", "unused_fc")
    assert _layers(cmap) == HARD_SHARED_LAYERS
    assert all("unused" not in m for c in cmap.components for m in c.modules)


def test_counts_match_manual_sums(tiny_model: nn.Module, tiny_images: Tensor) -> None:
    from adapmtl_cli.model.outputs import map_outputs
    from adapmtl_cli.tasks import get_task

    specs = [get_task("segmentation", num_classes=13), get_task("depth"), get_task("normal")]
    raw = tiny_model(tiny_images)
    cmap = discover_components(tiny_model, map_outputs(raw, specs, 2).select(raw), TASKS)
    modules = dict(tiny_model.named_modules())
    for component in cmap.components:
        own = [p for m in component.modules for p in modules[m].parameters(recurse=False)]
        assert component.params == sum(p.numel() for p in own)
        weights = [modules[layer.fqn].weight for layer in cmap.layers if layer.component == component.name]
        assert component.prunable_params == sum(w.numel() for w in weights)
    for layer in cmap.layers:
        assert layer.params == modules[layer.fqn].weight.numel()
    assert cmap.prunable_params == sum(
        m.weight.numel() for m in tiny_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )
    # Every parameter of the model belongs to exactly one component.
    listed = [m for c in cmap.components for m in c.modules]
    assert len(listed) == len(set(listed))
    assert sum(c.params for c in cmap.components) == sum(p.numel() for p in tiny_model.parameters())


def test_detached_output_is_an_error(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    outputs = {t: v.detach() for t, v in hard_shared(tiny_images).items()}
    with pytest.raises(DiscoveryError, match="'segmentation'"):
        discover_components(hard_shared, outputs, TASKS)


def test_no_trainable_parameters(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    hard_shared.requires_grad_(False)
    with pytest.raises(DiscoveryError, match="no trainable parameters"):
        _discover(hard_shared, tiny_images)


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        (("segmentation", "depth", "normal"), ("backbone", "backbone")),
        (("normal",), ("head:normal", "head")),
        (("segmentation", "depth"), ("shared:depth+segmentation", "shared")),
        (("depth", "segmentation"), ("shared:depth+segmentation", "shared")),
    ],
)
def test_component_name(tasks: tuple[str, ...], expected: tuple[str, str]) -> None:
    assert component_name(tasks, TASKS) == expected
