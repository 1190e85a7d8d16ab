"""Soft thresholds: which weights get parametrized, the maths of the forward, gradients, baking, measuring."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from adapmtl_cli.model.discover import ComponentMap, discover_components
from adapmtl_cli.model.outputs import map_outputs
from adapmtl_cli.sparsity.thresholds import (
    ThresholdedModel,
    bake_,
    init_thresholds_,
    inject_thresholds_,
    measure_layers,
    overall_sparsity,
    soft_threshold,
)
from adapmtl_cli.tasks import get_task

TASKS = ("segmentation", "depth", "normal")
SPECS = [get_task("segmentation", num_classes=13), get_task("depth"), get_task("normal")]


def _outputs(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    raw = model(images)
    return map_outputs(raw, SPECS, images.shape[0]).select(raw)


def _cmap(model: nn.Module, images: Tensor) -> ComponentMap:
    return discover_components(model, _outputs(model, images), TASKS)


def _thresholded(model: nn.Module, images: Tensor, granularity: str = "component") -> ThresholdedModel:
    """``model`` with thresholds at its 40% magnitude quantile, then each group moved by its own offset."""
    tm = inject_thresholds_(model, _cmap(model.eval(), images), granularity)
    init_thresholds_(tm, 0.4)
    with torch.no_grad():
        for i, group in enumerate(tm.bank.groups):
            tm.bank.logit(group).add_(0.3 * i - 0.5)
    return tm.eval()


def _reference_weights(original: nn.Module, tm: ThresholdedModel) -> nn.Module:
    """A plain copy of the original model whose weights are ``sign(w) * relu(|w| - sigmoid(s))``."""
    reference = copy.deepcopy(original).eval()
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for fqn, group in tm.groups.items():
            w = modules[fqn].weight
            t = 1.0 / (1.0 + torch.exp(-tm.bank.logit(group).detach().double()))
            w.copy_((torch.sign(w.double()) * torch.relu(w.double().abs() - t)).float())
    return reference


def test_injection_parametrizes_exactly_the_layers(tiny_model: nn.Module, tiny_images: Tensor) -> None:
    cmap = _cmap(tiny_model, tiny_images)
    tm = inject_thresholds_(tiny_model, cmap)
    parametrized = {n for n, m in tm.model.named_modules() if parametrize.is_parametrized(m)}
    assert parametrized == {layer.fqn for layer in cmap.layers}
    assert all(parametrize.is_parametrized(m, "weight") for n, m in tm.model.named_modules() if n in parametrized)
    assert set(tm.groups) == parametrized


def test_excluded_layer_is_not_parametrized(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    cmap = discover_components(hard_shared, hard_shared(tiny_images), TASKS, exclude=["heads.depth.2"])
    tm = inject_thresholds_(hard_shared, cmap)
    assert not parametrize.is_parametrized(tm.model.heads.depth[2])
    assert parametrize.is_parametrized(tm.model.heads.depth[0])


def test_one_threshold_per_component(tiny_model: nn.Module, tiny_images: Tensor) -> None:
    cmap = _cmap(tiny_model, tiny_images)
    tm = inject_thresholds_(tiny_model, cmap)
    components = [c.name for c in cmap.components if c.prunable_params]
    assert sorted(tm.bank.groups) == sorted(components)
    assert len(list(tm.bank.parameters())) == len(components)
    state = tm.state_dict()
    threshold_keys = [k for k in state if state[k].dim() == 0 and k.startswith("bank.")]
    assert len(threshold_keys) == len(components)
    # The parametrizations must not carry their own copy of the bank.
    assert not any("_bank" in k or (".parametrizations." in k and "bank" in k) for k in state)
    n_model = sum(p.numel() for p in tiny_model.parameters())
    assert sum(p.numel() for p in tm.parameters()) == n_model + len(components)


@pytest.mark.parametrize(("granularity", "expected"), [("layer", None), ("global", 1), ("component", 4)])
def test_granularity(hard_shared: nn.Module, tiny_images: Tensor, granularity: str, expected: int | None) -> None:
    cmap = _cmap(hard_shared, tiny_images)
    tm = inject_thresholds_(hard_shared, cmap, granularity)
    assert len(tm.bank.groups) == (expected or len(cmap.layers))
    assert len(list(tm.bank.parameters())) == len(tm.bank.groups)


def test_unknown_granularity(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    with pytest.raises(ValueError, match="'channel'"):
        inject_thresholds_(hard_shared, _cmap(hard_shared, tiny_images), "channel")


def test_forward_matches_the_formula(tiny_model: nn.Module, tiny_images: Tensor) -> None:
    original = copy.deepcopy(tiny_model.eval())
    tm = _thresholded(tiny_model, tiny_images)
    assert len(set(tm.bank.logits().values())) == len(tm.bank.groups)  # groups really differ
    reference = _reference_weights(original, tm)
    ref_modules = dict(reference.named_modules())
    for fqn, module in tm.layer_modules().items():
        want = ref_modules[fqn].weight
        assert torch.equal(module.weight == 0, want == 0), fqn
        torch.testing.assert_close(module.weight, want, rtol=0, atol=1e-7)
    with torch.no_grad():
        got, want = _outputs(tm, tiny_images), _outputs(reference, tiny_images)
    for task in TASKS:
        torch.testing.assert_close(got[task], want[task], rtol=1e-5, atol=1e-6)


def test_gradients_reach_thresholds_and_surviving_weights(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    tm = _thresholded(hard_shared, tiny_images).train()
    loss = sum((out**2).mean() for out in tm(tiny_images).values())
    loss.backward()
    for group in tm.bank.groups:
        grad = tm.bank.logit(group).grad
        assert grad is not None and torch.isfinite(grad) and grad != 0, group
    n_pruned = 0
    for fqn, group in tm.groups.items():
        w = tm.raw_weight(fqn)
        pruned = w.detach().abs() <= tm.bank.value(group).detach()
        n_pruned += int(pruned.sum())
        assert w.grad is not None
        assert torch.all(w.grad[pruned] == 0), fqn
        assert w.grad[~pruned].abs().sum() > 0, fqn
    assert n_pruned > 0


def test_bake_gives_plain_weights_with_identical_outputs(tiny_model: nn.Module, tiny_images: Tensor) -> None:
    tm = _thresholded(tiny_model, tiny_images)
    layers = list(tm.groups)
    # Forward with autograd on both times: matmul picks its kernel by the weight's requires_grad, and a
    # parametrized weight computed under no_grad lacks it, which would change the last bits, not the function.
    before = _outputs(tm, tiny_images)
    measured = {m.fqn: m.zeros for m in measure_layers(tm)}
    baked = bake_(tm)
    assert baked is tiny_model
    modules = dict(baked.named_modules())
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert all(type(modules[fqn].weight) is nn.Parameter for fqn in layers)
    assert not any("parametrizations" in k or "bank" in k for k in baked.state_dict())
    assert sum(measured.values()) > 0
    for fqn in layers:
        w = modules[fqn].weight
        assert int((w == 0).sum()) == measured[fqn], fqn
        assert not torch.any((w == 0) & torch.signbit(w)), f"{fqn} holds -0.0"
    after = _outputs(baked, tiny_images)
    for task in TASKS:
        assert torch.equal(before[task], after[task]), task


def test_measure_layers_counts_what_the_forward_zeroes(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    tm = _thresholded(hard_shared, tiny_images)
    layers = measure_layers(tm)
    assert [m.fqn for m in layers] == list(tm.groups)
    for m in layers:
        module = tm.layer_modules()[m.fqn]
        assert m.group == tm.groups[m.fqn]
        assert m.params == module.weight.numel()
        assert m.zeros == int((module.weight == 0).sum())
    assert overall_sparsity(layers) == sum(m.zeros for m in layers) / sum(m.params for m in layers)
    assert overall_sparsity([]) == 0.0


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("granularity", ["component", "layer"])
def test_init_thresholds_hits_the_quantile(
    branched: nn.Module, tiny_images: Tensor, sparsity: float, granularity: str
) -> None:
    tm = inject_thresholds_(branched, _cmap(branched, tiny_images), granularity)
    init_thresholds_(tm, sparsity)
    assert len(set(tm.bank.logits().values())) == 1
    total = sum(m.numel() for m in (tm.raw_weight(f) for f in tm.groups))
    assert abs(overall_sparsity(measure_layers(tm)) - sparsity) <= 2 / total


@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_per_group_init_makes_every_component_equally_sparse(
    branched: nn.Module, tiny_images: Tensor, sparsity: float
) -> None:
    tm = inject_thresholds_(branched, _cmap(branched, tiny_images), "component")
    init_thresholds_(tm, sparsity, per_group=True)
    assert len(set(tm.bank.logits().values())) == len(tm.bank.groups) > 1
    per_group: dict[str, list[int]] = {}
    for s in measure_layers(tm):
        acc = per_group.setdefault(s.group, [0, 0])
        acc[0] += s.zeros
        acc[1] += s.params
    for zeros, n in per_group.values():
        assert abs(zeros / n - sparsity) <= 2 / n


def test_state_dict_round_trip(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    fresh = copy.deepcopy(hard_shared)
    tm = _thresholded(hard_shared, tiny_images)
    other = inject_thresholds_(fresh, _cmap(fresh, tiny_images)).eval()
    other.load_state_dict(tm.state_dict())
    assert other.bank.logits() == tm.bank.logits()
    with torch.no_grad():
        a, b = _outputs(tm, tiny_images), _outputs(other, tiny_images)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- the hand-written backward -------------------------------------------------------------------


def _autograd_reference(w: Tensor, s: Tensor) -> Tensor:
    t = torch.sigmoid(s.float())
    return w - torch.clamp(w, -t, t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_threshold_matches_autograd_values_and_gradients(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 32, 3, 3, generator=g) * 0.05
    s = torch.tensor(-3.5)
    t = torch.sigmoid(s)
    w[0, 0, 0, :2] = torch.stack([t, -t])  # exactly on the threshold: pruned, no gradient either way
    upstream = torch.randn(w.shape, generator=g)
    results = []
    for custom in (True, False):
        wi, si = w.clone().requires_grad_(), s.clone().requires_grad_()
        out = soft_threshold(wi, torch.sigmoid(si.float())) if custom else _autograd_reference(wi, si)
        out.backward(upstream)
        results.append((out.detach(), wi.grad, si.grad))
    (out, gw, gs), (ref_out, ref_gw, ref_gs) = results
    assert torch.equal(out, ref_out) and not torch.any((out == 0) & torch.signbit(out))
    assert torch.equal(gw, ref_gw)  # weight gradients: bit for bit
    assert out[0, 0, 0, :2].tolist() == [0.0, 0.0] and gw[0, 0, 0, :2].tolist() == [0.0, 0.0]
    # threshold gradient: the same sum, added up in another order
    torch.testing.assert_close(gs, ref_gs, rtol=1e-5, atol=1e-7)
    assert gs != 0


def test_thresholded_weight_stays_fp32_under_bf16_autocast(hard_shared: nn.Module, tiny_images: Tensor) -> None:
    tm = _thresholded(hard_shared, tiny_images).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = tm(tiny_images)
        weights = {fqn: m.weight for fqn, m in tm.layer_modules().items()}
    assert all(w.dtype == torch.float32 for w in weights.values())
    measured = {m.fqn: m.zeros for m in measure_layers(tm)}
    assert {fqn: int((w == 0).sum()) for fqn, w in weights.items()} == measured
    sum(o.float().square().mean() for o in outputs.values()).backward()
    assert all(
        tm.bank.logit(g).grad is not None and tm.bank.logit(g).grad.dtype == torch.float32 for g in tm.bank.groups
    )
