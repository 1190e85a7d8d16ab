"""Channel groups and exact physical channel removal (adapmtl_cli/model/channels.py, Torch-Pruning based)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch
from channel_models import Concat, Depthwise, Flatten, Multitask, Residual, cbr
from torch import nn

from adapmtl_cli.errors import ExportError
from adapmtl_cli.model.channels import (
    ChannelGroup,
    channel_groups,
    count_params_flops,
    group_norms,
    remove_channels,
)


def _prepared(factory: Callable[[], nn.Module]) -> nn.Module:
    """A model with random BatchNorm affine parameters and non-trivial running statistics, in eval mode."""
    torch.manual_seed(0)
    model = factory()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 8, 8) * 2 + 0.5)
    return model.eval()


# name: (factory, protected layer names, expected roots (first: the one whose members are listed), its members)
CASES: dict[str, tuple[Callable[[], nn.Module], list[str], list[str], set[tuple[str, str]]]] = {
    "residual": (
        Residual,
        ["head"],
        ["a"],
        {
            ("a", "out_channels"),
            ("bna", "batchnorm"),
            ("b", "in_channels"),
            ("b", "out_channels"),
            ("bnb", "batchnorm"),
            ("head", "in_channels"),
        },
    ),
    "concat": (
        Concat,
        ["head"],
        ["br1.0", "br2.0", "mix.0"],
        {("br1.0", "out_channels"), ("br1.1", "batchnorm"), ("mix.0", "in_channels")},
    ),
    "depthwise": (
        Depthwise,
        ["head"],
        ["expand.0", "pw.0"],
        {
            ("expand.0", "out_channels"),
            ("expand.1", "batchnorm"),
            ("dw.0", "depthwise"),
            ("dw.1", "batchnorm"),
            ("pw.0", "in_channels"),
        },
    ),
    "flatten": (
        Flatten,
        ["fc"],
        ["body.0"],
        {("body.0", "out_channels"), ("body.1", "batchnorm"), ("fc", "in_channels")},
    ),
    "multitask": (
        Multitask,
        ["seg_out", "cls_out"],
        ["stem.0", "seg_hidden", "cls_hidden"],
        {
            ("stem.0", "out_channels"),
            ("stem.1", "batchnorm"),
            ("seg_hidden", "in_channels"),
            ("cls_hidden", "in_channels"),
        },
    ),
}

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _model_and_groups(case: str) -> tuple[nn.Module, list[nn.Module], dict[str, ChannelGroup]]:
    factory, protected_names, _, _ = CASES[case]
    model = _prepared(factory)
    protected = [model.get_submodule(n) for n in protected_names]
    groups = channel_groups(model, X, protected=protected)
    return model, protected, {g.root: g for g in groups}


def _keep_plan(groups: Mapping[str, ChannelGroup]) -> dict[str, list[int]]:
    """Drop channel 1 (and the last, when more than 3) of every group."""
    plan = {}
    for root, g in groups.items():
        drop = {1} | ({g.channels - 1} if g.channels > 3 else set())
        plan[root] = [c for c in range(g.channels) if c not in drop]
    return plan


def _dropped(group: ChannelGroup, kept: Sequence[int], kinds: set[str]) -> dict[str, set[int]]:
    """Per module, its own indices of the dropped root channels, for slices of the given kinds."""
    dropped_roots = set(range(group.channels)) - set(kept)
    out: dict[str, set[int]] = {}
    for s in group.slices:
        if s.kind in kinds:
            out.setdefault(s.module, set()).update(
                c for r, c in zip(s.root_channels, s.channels, strict=True) if r in dropped_roots
            )
    return out


def _masked_outputs(model: nn.Module, groups: Mapping[str, ChannelGroup], keep: Mapping[str, list[int]]) -> Any:
    """The original model's outputs with the dropped channels zeroed after every coupled producer."""
    zero: dict[str, set[int]] = {}
    for root, kept in keep.items():
        for name, idx in _dropped(groups[root], kept, {"out_channels", "batchnorm", "depthwise"}).items():
            zero.setdefault(name, set()).update(idx)

    def hook(channels: list[int]) -> Callable[..., torch.Tensor]:
        def apply(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[:, channels] = 0
            return out

        return apply

    handles = [model.get_submodule(n).register_forward_hook(hook(sorted(c))) for n, c in zero.items()]
    try:
        with torch.no_grad():
            return model(X)
    finally:
        for h in handles:
            h.remove()


def _as_dict(out: Any) -> dict[str, torch.Tensor]:
    return dict(out) if isinstance(out, Mapping) else {"out": out}


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", sorted(CASES))
def test_groups_found_and_output_layers_never_roots(case: str) -> None:
    _, protected_names, roots, first_members = CASES[case]
    model, protected, groups = _model_and_groups(case)
    assert list(groups) == roots  # in module order
    assert not set(protected_names) & set(groups)
    first = roots[0]
    assert set(groups[first].members) == first_members
    assert groups[first].members[0] == (first, "out_channels")
    for g in groups.values():
        assert g.channels == model.get_submodule(g.root).weight.shape[0]
        assert all(not (name in protected_names and kind == "out_channels") for name, kind in g.members)
    # without `protected` the output layers are still never roots: removing their channels changes an output
    unprotected = {g.root for g in channel_groups(model, X)}
    assert not set(protected_names) & unprotected
    assert model.training is False


def test_residual_partners_form_one_group_and_record_the_addition() -> None:
    _, _, groups = _model_and_groups("residual")
    assert list(groups) == ["a"]
    assert "add" in groups["a"].via
    _, _, cat = _model_and_groups("concat")
    assert "concat" in cat["br2.0"].via
    br2_in = [s for s in cat["br2.0"].slices if s.kind == "in_channels"]
    assert [s.channels for s in br2_in] == [(3, 4)]  # offset by br1's 3 channels after the cat
    _, _, flat = _model_and_groups("flatten")
    (fc_in,) = [s for s in flat["body.0"].slices if s.module == "fc"]
    assert fc_in.channels == tuple(range(256))  # each channel is 64 features of the flattened map
    assert fc_in.root_channels == tuple(c for c in range(4) for _ in range(64))


@pytest.mark.parametrize("case", sorted(CASES))
def test_removal_is_exact_and_keeps_weights(case: str) -> None:
    model, protected, groups = _model_and_groups(case)
    keep = _keep_plan(groups)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _as_dict(_masked_outputs(model, groups, keep))
    with torch.no_grad():
        unmasked = _as_dict(model(X))
    assert all(not torch.allclose(unmasked[k], expected[k], atol=1e-3) for k in expected)  # the masking matters

    small = remove_channels(model, X, keep, protected=protected)

    # the input model is untouched
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert model.get_submodule(next(iter(keep))).weight.shape[0] == groups[next(iter(keep))].channels
    assert small.training is False
    with torch.no_grad():
        got = _as_dict(small(X))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].shape == expected[key].shape
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)

    # every kept channel's parameters are unchanged (dim 0: produced channels, dim 1: read channels)
    drop0: dict[str, set[int]] = {}
    drop1: dict[str, set[int]] = {}
    for root, kept in keep.items():
        for n, idx in _dropped(groups[root], kept, {"out_channels", "batchnorm", "depthwise"}).items():
            drop0.setdefault(n, set()).update(idx)
        for n, idx in _dropped(groups[root], kept, {"in_channels"}).items():
            drop1.setdefault(n, set()).update(idx)
    assert drop0 and drop1
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        for pname, old in params.items():
            new = getattr(small.get_submodule(name), pname)
            if old.ndim == 0:
                assert torch.equal(new, old)
                continue
            rows = [i for i in range(old.shape[0]) if i not in drop0.get(name, set())]
            sliced = old[rows]
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1  # weight (C, 1, k, k)
            if old.ndim > 1 and not depthwise:
                sliced = sliced[:, [i for i in range(old.shape[1]) if i not in drop1.get(name, set())]]
            assert torch.equal(new, sliced), f"{name}.{pname}"

    # parameters and FLOPs go down
    params0, flops0 = count_params_flops(model, X)
    params1, flops1 = count_params_flops(small, X)
    assert params1 < params0 and flops1 < flops0
    assert params0 == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("case", sorted(CASES))
def test_keeping_everything_changes_nothing(case: str) -> None:
    model, protected, groups = _model_and_groups(case)
    full = {root: list(range(g.channels)) for root, g in groups.items()}
    same = remove_channels(model, X, full, protected=protected)
    with torch.no_grad():
        for key, value in _as_dict(model(X)).items():
            assert torch.equal(_as_dict(same(X))[key], value)


def test_one_group_only_and_keep_forms() -> None:
    model, protected, groups = _model_and_groups("multitask")
    mask = torch.tensor([True, False, True, True])
    small = remove_channels(model, X, {"stem.0": mask}, protected=protected)
    assert small.get_submodule("stem.0").out_channels == 3
    assert small.get_submodule("cls_hidden").in_features == 3
    assert small.get_submodule("seg_hidden").in_channels == 3
    assert small.get_submodule("seg_hidden").out_channels == 3  # other groups keep everything
    again = remove_channels(model, X, {"stem.0": torch.tensor([3, 0, 2])}, protected=protected)
    with torch.no_grad():
        for key, value in _as_dict(small(X)).items():
            assert torch.equal(_as_dict(again(X))[key], value)


def test_group_norms_cover_every_coupled_slice() -> None:
    model, _, groups = _model_and_groups("residual")
    norms = group_norms(model, groups.values())
    assert set(norms) == {"a"}
    m: Any = model
    expect = (
        m.a.weight.pow(2).flatten(1).sum(1)
        + m.a.bias.pow(2)
        + m.bna.weight.pow(2)
        + m.bna.bias.pow(2)
        + m.b.weight.pow(2).flatten(1).sum(1)
        + m.b.bias.pow(2)
        + m.bnb.weight.pow(2)
        + m.bnb.bias.pow(2)
        + m.b.weight.pow(2).transpose(0, 1).flatten(1).sum(1)
        + m.head.weight.pow(2).transpose(0, 1).flatten(1).sum(1)
    ).sqrt()
    torch.testing.assert_close(norms["a"], expect)
    assert norms["a"].requires_grad  # differentiable, for a learnable threshold

    # concat: br2's channels are columns 3..4 of mix's filter
    model, _, groups = _model_and_groups("concat")
    m = model
    got = group_norms(model, [groups["br2.0"]])["br2.0"]
    conv, bn, mix = m.br2[0], m.br2[1], m.mix[0]
    want = (
        conv.weight.pow(2).flatten(1).sum(1)
        + conv.bias.pow(2)
        + bn.weight.pow(2)
        + bn.bias.pow(2)
        + mix.weight[:, 3:5].pow(2).transpose(0, 1).flatten(1).sum(1)
    ).sqrt()
    torch.testing.assert_close(got, want)

    # zeroing every coupled slice of a channel gives it norm 0
    model, _, groups = _model_and_groups("depthwise")
    g = groups["expand.0"]
    with torch.no_grad():
        for s in g.slices:
            mod = model.get_submodule(s.module)
            c = s.channels[s.root_channels.index(2)]
            if s.kind == "in_channels":
                mod.weight[:, c] = 0
            else:
                mod.weight[c] = 0
                if mod.bias is not None:
                    mod.bias[c] = 0
    n = group_norms(model, [g])["expand.0"].detach()
    assert n[2] == 0 and bool((n[[0, 1, 3]] > 0).all())


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({"nope": [0]}, "not a prunable channel group"),
        ({"seg_out": [0]}, "not a prunable channel group"),
        ({"stem.0": []}, "keeping zero"),
        ({"stem.0": torch.zeros(4, dtype=torch.bool)}, "keeping zero"),
        ({"stem.0": [0, 4]}, "out of range"),
        ({"stem.0": [-1]}, "out of range"),
        ({"stem.0": [0, 0]}, "repeat"),
        ({"stem.0": [0.5]}, "not an integer"),
        ({"stem.0": torch.tensor([0.0])}, "integers"),
        ({"stem.0": torch.ones(3, dtype=torch.bool)}, "mask"),
    ],
)
def test_bad_keep_is_refused(keep: dict[str, Any], message: str) -> None:
    model, protected, _ = _model_and_groups("multitask")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ExportError, match=message) as info:
        remove_channels(model, X, keep, protected=protected)
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_feature_output_and_train_mode_are_respected() -> None:
    """A tensor returned as an output keeps its channels; tracing leaves modes and grad flags as they were."""

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 4)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.stem(x)
            return self.head(f), f

    model = Features().train()
    for p in model.parameters():
        p.requires_grad_(False)
    assert channel_groups(model, X, protected=[model.head]) == []
    assert model.training and model.stem[1].training
    assert not any(p.requires_grad for p in model.parameters())


def test_frozen_flags_survive_removal_and_untraceable_outputs_are_refused() -> None:
    model, protected, groups = _model_and_groups("residual")
    model.a.requires_grad_(False)
    small = remove_channels(model, X, {"a": [0, 2]}, protected=protected)
    assert not small.get_submodule("a").weight.requires_grad
    assert small.get_submodule("b").weight.requires_grad
    assert small.get_submodule("a").weight.shape[0] == 2

    class NoGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).argmax(1)

    with pytest.raises(ExportError, match="no autograd graph"):
        channel_groups(NoGraph(), X)
