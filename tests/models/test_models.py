"""Reference models (one contract over every factory, plus export parity) and the tiny test topologies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import DICT_OUTPUT_MODELS, TINY_MODELS, Branched, HardShared, TupleOutput
from torch import Tensor, nn

from adapmtl_cli.api import discover
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.models import (
    DEFAULT_TASKS,
    MODELS,
    DeepLabResNetMTL,
    MobileNetV2MTL,
    deeplab_resnet_tiny,
    mobilenet_aspp_tiny,
    mobilenet_v2_tiny,
)

TINY_FACTORIES = ("deeplab_resnet_tiny", "mobilenet_v2_tiny")
SMALL_FACTORIES = (*TINY_FACTORIES, "mobilenet_aspp_tiny")
"""The factories cheap enough to build, run and export in every test run."""


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build(name: str, seed: int = 0, **overrides: object) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name](**overrides).eval()


class _AsTuple(nn.Module):
    """Exporters and onnxruntime speak positional outputs; return the dict's values in task order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(x).values())


# ---- reference factories ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factory_builds_without_arguments_and_predicts_every_task(name: str) -> None:
    model = _build(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert list(out) == list(DEFAULT_TASKS)
    stride = 32 if name == "mobilenet_v2" else 8
    for task, channels in DEFAULT_TASKS.items():
        assert out[task].shape == (1, channels, 64 // stride, 96 // stride)
    assert isinstance(model.backbone, nn.Module)
    assert set(model.heads) == set(DEFAULT_TASKS)


@pytest.mark.parametrize("name", SMALL_FACTORIES)
def test_tiny_factory_takes_custom_tasks_and_keeps_output_stride_8(name: str) -> None:
    tasks = {"edges": 1, "keypoints": 2, "segmentation": 40}
    model = _build(name, tasks=tasks)
    out = model(torch.randn(2, 3, 96, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {t: (2, c, 12, 16) for t, c in tasks.items()}


@pytest.mark.parametrize("name", TINY_FACTORIES)
def test_tiny_factory_fits_the_parameter_budget(name: str) -> None:
    assert 100_000 <= _n_params(_build(name)) <= 300_000


def test_parameter_count_grows_with_width() -> None:
    deeplab = [_n_params(deeplab_resnet_tiny(width=w)) for w in (8, 12, 16)]
    mobilenet = [_n_params(mobilenet_v2_tiny(width_mult=m)) for m in (0.25, 0.5, 1.0)]
    assert deeplab == sorted(set(deeplab))
    assert mobilenet == sorted(set(mobilenet))


def test_deeplab_depth_knob_matches_resnet_block_counts() -> None:
    resnet18 = DeepLabResNetMTL(tasks={"x": 1}, blocks=(2, 2, 2, 2), head_width=8)
    resnet34 = DeepLabResNetMTL(tasks={"x": 1}, blocks=(3, 4, 6, 3), head_width=8)
    assert [len(getattr(resnet34.backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # Torchvision's ResNet-18/34 trunks without fc hold these many parameters; the dilated versions match.
    assert _n_params(resnet18.backbone) == 11_176_512
    assert _n_params(resnet34.backbone) == 21_284_672


def test_mobilenet_backbone_matches_standard_mobilenet_v2() -> None:
    model = MobileNetV2MTL(tasks={"x": 1}, head_width=8)
    assert model.backbone.out_channels == 1280
    assert _n_params(model.backbone) == 2_223_872


@pytest.mark.parametrize("name", SMALL_FACTORIES)
def test_same_seed_builds_identical_models(name: str) -> None:
    a, b, c = _build(name, seed=0), _build(name, seed=0), _build(name, seed=1)
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), key
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.parametrize("name", SMALL_FACTORIES)
def test_state_dict_round_trip_reproduces_outputs(name: str) -> None:
    source, target = _build(name, seed=0), _build(name, seed=1)
    source.train()(torch.randn(4, 3, 32, 48))  # move BatchNorm running stats away from their defaults
    source.eval()
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected, actual = source(x), target(x)
    for task in expected:
        torch.testing.assert_close(actual[task], expected[task], rtol=0, atol=0)


def test_head_heavy_model_predicts_at_one_eighth_of_the_demo_input() -> None:
    out = _build("mobilenet_aspp_tiny")(torch.randn(2, 3, 72, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "segmentation": (2, 13, 9, 12),
        "depth": (2, 1, 9, 12),
        "normal": (2, 3, 9, 12),
    }


def test_head_heavy_model_keeps_at_most_15_percent_of_the_prunable_weights_in_the_backbone() -> None:
    model = _build("mobilenet_aspp_tiny")
    found = discover(model, torch.randn(2, 3, 72, 96), tasks=list(DEFAULT_TASKS))
    prunable = {c.name: c.prunable_params for c in found.cmap.components}
    assert set(prunable) == {"backbone", "head:segmentation", "head:depth", "head:normal"}
    assert prunable["backbone"] / found.cmap.prunable_params <= 0.15
    # The sizes the factory's docstring states (module adapmtl_cli.models.aspp).
    assert prunable == {
        "backbone": 102_816,
        "head:segmentation": 367_104,
        "head:depth": 360_960,
        "head:normal": 361_984,
    }
    assert found.cmap.prunable_params == 1_192_864 and _n_params(model) == 1_200_164
    assert not found.cmap.unreached and not found.cmap.excluded


def test_head_heavy_model_takes_overrides() -> None:
    model = mobilenet_aspp_tiny(tasks={"depth": 1}, head_width=32)
    assert isinstance(model, MobileNetV2MTL) and list(model.heads) == ["depth"]
    assert model(torch.randn(1, 3, 32, 48))["depth"].shape == (1, 1, 4, 6)
    assert model.heads["depth"].branches[0][0].out_channels == 32


@pytest.mark.parametrize(
    ("factory", "overrides", "message"),
    [
        (deeplab_resnet_tiny, {"blocks": (1, 1, 1)}, "blocks (1, 1, 1) must be four positive counts"),
        (deeplab_resnet_tiny, {"stem_kernel": 5}, "stem_kernel 5 must be 3 or 7"),
        (deeplab_resnet_tiny, {"tasks": {}}, "tasks is empty"),
        (deeplab_resnet_tiny, {"tasks": {"depth": 0}}, "task 'depth' has 0 channels"),
        (deeplab_resnet_tiny, {"head_dilations": ()}, "head dilations () are invalid"),
        (mobilenet_v2_tiny, {"output_stride": 4}, "output_stride 4 must be 8, 16 or 32"),
    ],
)
def test_invalid_knobs_raise_config_error(factory: object, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        factory(**overrides)  # type: ignore[operator]


@pytest.mark.onnx
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("name", SMALL_FACTORIES)
def test_onnx_export_matches_onnxruntime(name: str, dynamo: bool, tmp_path: object) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _build(name)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    path = f"{tmp_path}/{name}.onnx"
    # The legacy exporter restores the wrapper's train/eval mode on the whole tree afterwards, so the wrapper
    # itself must be in eval mode or the reference below would run BatchNorm in training mode.
    wrapper = _AsTuple(model).eval()
    torch.onnx.export(wrapper, (x,), path, dynamo=dynamo, input_names=["image"], output_names=list(model.tasks))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert len(got) == len(expected)
    for out, ref in zip(got, expected.values(), strict=True):
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)


# ---- tiny test topologies ---------------------------------------------------------------------------


def test_tiny_topologies_are_tiny(tiny_model: nn.Module, tiny_images: Tensor) -> None:
    assert _n_params(tiny_model) < 20_000


@pytest.mark.parametrize("name", DICT_OUTPUT_MODELS)
def test_dict_topologies_return_one_map_per_task(name: str, tiny_images: Tensor) -> None:
    torch.manual_seed(0)
    out = TINY_MODELS[name]()(tiny_images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {t: (2, c, 8, 12) for t, c in DEFAULT_TASKS.items()}


def test_tuple_output_returns_nested_positional_outputs(tuple_output: nn.Module, tiny_images: Tensor) -> None:
    maps, aux = tuple_output(tiny_images)
    assert isinstance(maps, list)
    assert [tuple(m.shape) for m in maps] == [(2, 13, 8, 12), (2, 1, 8, 12), (2, 3, 8, 12)]
    assert aux.shape == (2, 16)


def test_topologies_accept_custom_tasks(tiny_images: Tensor) -> None:
    tasks = {"segmentation": 5, "normal": 3, "edges": 1}
    for cls in (HardShared, Branched, TupleOutput):
        assert len(cls(tasks=tasks).heads) == 3


def test_branched_routes_normal_through_its_own_branch(branched: nn.Module, tiny_images: Tensor) -> None:
    branched.zero_grad()
    branched(tiny_images)["normal"].sum().backward()
    assert all(p.grad is None for p in branched.branch_a.parameters())
    assert all(p.grad is not None for p in branched.branch_b.parameters())
    assert all(p.grad is not None for p in branched.stem.parameters())


def test_task_attention_gates_per_task(task_attention: nn.Module, tiny_images: Tensor) -> None:
    assert set(task_attention.encoder.att) == set(DEFAULT_TASKS)
    task_attention(tiny_images)["depth"].sum().backward()
    assert task_attention.encoder.att["depth"][0].weight.grad is not None
    assert task_attention.encoder.att["normal"][0].weight.grad is None


def test_with_linear_has_a_linear_layer_in_a_head(with_linear: nn.Module, tiny_images: Tensor) -> None:
    assert any(isinstance(m, nn.Linear) for m in with_linear.heads["normal"].modules())
    assert with_linear(tiny_images)["normal"].shape == (2, 3, 8, 12)


def test_fixtures_build_deterministically(hard_shared: nn.Module) -> None:
    torch.manual_seed(0)
    for a, b in zip(hard_shared.parameters(), HardShared().parameters(), strict=True):
        assert torch.equal(a, b)
