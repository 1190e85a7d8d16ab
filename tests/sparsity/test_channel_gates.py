"""``--structure channel``: channel gates, the channel level controller and FLOPs, on residual, concatenation,
depthwise, branched multitask and flatten-into-Linear models (sparsity/channel_gates.py, channel_flops.py,
methods/channel_pruner.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from channel_models import Concat, Depthwise, Flatten, Multitask, Residual
from torch import nn

import adapmtl_cli as adapmtl
from adapmtl_cli.errors import CheckpointError, ConfigError
from adapmtl_cli.model.channels import remove_channels
from adapmtl_cli.sparsity.channel_flops import layer_flops
from adapmtl_cli.sparsity.channel_gates import GATE_POWER, SCALE_RMS, gate_values, rank_scores

CASES: dict[str, Callable[[], nn.Module]] = {
    "residual": Residual,
    "concat": Concat,
    "depthwise": Depthwise,
    "multitask": Multitask,
    "flatten": Flatten,
}
X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _outputs(out: Any) -> dict[str, torch.Tensor]:
    return dict(out) if isinstance(out, dict) else {"out": out}


def _tasks(model: nn.Module) -> list[str]:
    return list(_outputs(model(X)))


def _prepare(case: str, fraction: float, steps: int, **kw: Any) -> adapmtl.Pruning:
    torch.manual_seed(0)
    model = CASES[case]()
    tasks = _tasks(model)
    return adapmtl.prepare(
        model, X, tasks=tasks, outputs=tasks, sparsity=fraction, steps=steps, structure="channel", **kw
    )


def _train(pruning: adapmtl.Pruning, steps: int) -> float:
    opt = torch.optim.Adam(pruning.param_groups(lr=1e-2))
    got = 0.0
    for step in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 + step))
        out = _outputs(pruning.model(x))
        loss = pruning.weigh({t: v.pow(2).mean() for t, v in out.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        got = pruning.step()
    return got


@pytest.mark.parametrize("method", ["adapmtl", "tp_magnitude", "tp_taylor"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_channel_run_is_exact_from_gates_to_the_smaller_model(case: str, method: str) -> None:
    """Gated model == baked model (bit for bit in eval); baked == physically smaller model to 1e-5; the
    removed fraction is exactly the target; kept channels keep their weights."""
    pruning = _prepare(case, 0.5, 6, method=method)
    achieved = _train(pruning, 6)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    total = int(cm.inv_norm.numel())
    assert achieved == round(0.5 * total) / total
    pruning.model.eval()
    with torch.no_grad():
        gated = _outputs(pruning.model(X))
    model = pruning.finalize().eval()
    with torch.no_grad():
        baked = _outputs(model(X))
    for t in gated:
        assert torch.equal(gated[t], baked[t]), t
    summary = pruning.channels()
    assert summary is not None and summary["achieved"] == achieved
    smaller = remove_channels(model, X, summary["keep"]).eval()
    with torch.no_grad():
        small = _outputs(smaller(X))
    for t in baked:
        torch.testing.assert_close(small[t], baked[t], rtol=0, atol=1e-5)
    removed = sum(len(range(g.group.channels)) - len(summary["keep"][g.group.root]) for g in cm.gated)
    assert removed == round(0.5 * total)
    for g in cm.gated:  # every kept filter of a root layer keeps its values; only zero input slices go
        kept = summary["keep"][g.group.root]
        before = model.get_submodule(g.group.root).weight[kept].detach()
        after = smaller.get_submodule(g.group.root).weight.detach()
        assert after.shape[0] == len(kept)
        assert torch.equal(before[before != 0].sort().values, after[after != 0].sort().values)
    assert summary["params_after"] < summary["params_before"]
    assert summary["flops_after"] < summary["flops_before"]
    assert sum(c["removed"] for c in summary["components"].values()) == removed


def test_a_removed_channel_is_read_by_nobody_and_its_slices_are_zero() -> None:
    pruning = _prepare("concat", 0.5, 4)
    _train(pruning, 4)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    keep = cm.keep_lists()
    model = pruning.finalize()
    for g in cm.gated:
        drop = [i for i in range(g.group.channels) if i not in keep[g.group.root]]
        for s in g.group.slices:
            w = model.get_submodule(s.module).weight
            rows = [c for r, c in zip(s.root_channels, s.channels, strict=True) if r in drop]
            part = w[:, rows] if s.kind == "in_channels" else w[rows]
            assert not part.any(), (s.module, s.kind)


def test_thresholds_start_at_each_components_quantile_and_gates_follow_the_scores() -> None:
    pruning = _prepare("multitask", 0.5, 10)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    norms = cm.normalised_norms()
    for i, g in enumerate(cm.gated):  # every group's norms sit around 1 / SCALE_RMS
        part = norms[g.offset : g.offset + g.group.channels]
        assert abs(float(part.pow(2).mean().sqrt()) - 1 / SCALE_RMS) < 1e-5, i
    r = cm.channel_scores()  # the rank scores of those norms (RANK_SCORES)
    assert torch.equal(r, rank_scores(norms, cm.gated))
    t = torch.sigmoid(torch.stack([cm.bank.logit(c) for c in cm.bank.groups])).detach()
    for i, c in enumerate(cm.bank.groups):  # each component starts with the target's share of its channels removed
        mine = cm.component_index == i
        assert abs(float((r[mine] <= t[i]).float().mean()) - 0.5) <= 1 / int(mine.sum()), c
    t = t[cm.component_index]
    r_eff = r.clone()
    for g in cm.gated:  # a group's strongest channel counts as at least 1: no threshold removes it
        top = g.offset + int(torch.argmax(r[g.offset : g.offset + g.group.channels]))
        r_eff[top] = max(float(r[top]), 1.0)
    gates = cm.gates()
    expected = gate_values(t / r_eff)
    assert (
        expected[[g.offset + int(torch.argmax(r[g.offset : g.offset + g.group.channels])) for g in cm.gated]] > 0
    ).all()
    torch.testing.assert_close(gates.detach(), expected, rtol=1e-5, atol=1e-6)
    # the gate is differentiable in the thresholds: raising a threshold lowers every open gate of its component
    gates.sum().backward()
    grads = [float(cm.bank.logit(c).grad) for c in cm.bank.groups]
    assert all(g < 0 for g in grads)


def test_the_gate_shrinks_kept_channels_by_the_power_of_their_threshold_ratio() -> None:
    ratio = torch.tensor([0.0, 0.5, 0.99, 1.0, 2.0, float("inf")])
    p = GATE_POWER
    assert torch.allclose(gate_values(ratio), torch.tensor([1.0, 1 - 0.5**p, 1 - 0.99**p, 0.0, 0.0, 0.0]))


def test_flops_target_lands_on_the_fraction_of_flops_and_the_cost_model_is_exact() -> None:
    pruning = _prepare("residual", 0.4, 6, target="flops")
    _train(pruning, 6)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    flops = pruning.pruner.flops  # type: ignore[attr-defined]
    removed = cm.removed()
    saved = flops.removed(removed)
    model = pruning.finalize().eval()
    summary = pruning.channels()
    assert summary is not None and summary["target"] == "flops"
    smaller = remove_channels(model, X, summary["keep"])
    after = layer_flops(smaller, X, []).total  # the same counter on the physically smaller model
    assert saved == pytest.approx(flops.total - after, rel=1e-9)
    # the closest reachable FLOPs fraction: within one channel's cost of the target
    biggest = max(
        flops.removed(torch.nn.functional.one_hot(torch.tensor(j), len(removed)).bool()) for j in range(len(removed))
    )
    assert abs(saved - 0.4 * flops.total) <= biggest
    assert summary["achieved"] == pytest.approx(saved / flops.total)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"method": "gmp"},
            "--method gmp prunes weights; --structure channel works with --method adapmtl, tp_magnitude, tp_taylor",
        ),
        ({"layer_scale": "saliency"}, "--layer-scale scales weight thresholds"),
        ({"component_sparsity": {"backbone": (0.1, 0.5)}}, "does not apply to --structure channel"),
        ({"target": "params"}, "--target 'params' is not one of channels, flops"),
        ({"method": "tp_magnitude", "target": "flops"}, "--target flops needs learned thresholds (--method adapmtl)"),
        ({"method": "tp_taylor", "target": "flops"}, "--method tp_taylor removes channels by count"),
    ],
)
def test_channel_options_that_do_not_combine_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _prepare("multitask", 0.5, 4, **kw)


def test_weight_runs_refuse_a_channel_target_and_channel_only_methods() -> None:
    model = Multitask()
    with pytest.raises(ConfigError, match="--target chooses what a channel run counts; it needs --structure channel"):
        adapmtl.prepare(model, X, tasks=_tasks(model), target="flops", structure="weight", layer_scale="none")
    with pytest.raises(ConfigError, match="--method tp_magnitude prunes channels; --structure weight works with"):
        adapmtl.prepare(model, X, tasks=_tasks(model), method="tp_magnitude", structure="weight")


def test_a_model_without_prunable_channel_groups_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1))  # its only conv is the output layer
    with pytest.raises(ConfigError, match="found no prunable channel group"):
        adapmtl.prepare(model, X, tasks=["out"], outputs=["out"], structure="channel")


def test_resume_state_round_trips_a_channel_run() -> None:
    a = _prepare("depthwise", 0.5, 8)
    _train(a, 3)
    state = a.state_dict()
    b = _prepare("depthwise", 0.5, 8)
    b.load_state_dict(state)
    ca, cb = a.pruner.cm, b.pruner.cm  # type: ignore[attr-defined]
    assert torch.equal(ca.inv_norm, cb.inv_norm) and torch.equal(ca.gates(), cb.gates())
    assert torch.equal(ca.get_buffer("taylor_key"), cb.get_buffer("taylor_key"))
    assert b.step_count == 3
    # a state without the Taylor key (an older version's channel run) is refused with an actionable error
    old = {**state, "model": {k: v for k, v in state["model"].items() if not k.endswith("taylor_key")}}
    with pytest.raises(CheckpointError, match="does not fit this adapmtl run.*--overwrite"):
        _prepare("depthwise", 0.5, 8).load_state_dict(old)


def test_rank_scores_let_one_threshold_remove_the_same_fraction_of_every_group() -> None:
    from adapmtl_cli.model.channels import ChannelGroup
    from adapmtl_cli.sparsity.channel_gates import GatedGroup

    groups = [GatedGroup(ChannelGroup(f"g{i}", n, ()), "c", off) for i, (n, off) in enumerate([(4, 0), (8, 4)])]
    r = torch.tensor([0.3, 0.1, 0.0, 0.2, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25])
    q = rank_scores(r, groups, multiple=1)  # channel by channel
    assert float(q[2]) == 0.0  # a zero channel scores 0: removed by any threshold
    for g in groups:  # increasing with the norm inside a group, at most 1 (no threshold in (0, 1) removes the top)
        part, norms = q[g.offset : g.offset + g.group.channels], r[g.offset : g.offset + g.group.channels]
        assert torch.equal(torch.argsort(part), torch.argsort(norms)) and float(part.max()) <= 1.0
    for t in (0.25, 0.5, 0.75):  # a threshold t removes the fraction t of both groups (4 and 8 channels)
        assert [int((q[g.offset : g.offset + g.group.channels] <= t).sum()) for g in groups] == [4 * t, 8 * t]
    # equal ranks of different groups are ordered by their relative norms, so every count is reachable
    assert len(set(q.tolist())) == len(q)


def test_rank_scores_of_wide_groups_remove_whole_chunks_so_kept_counts_are_multiples() -> None:
    from adapmtl_cli.model.channels import ChannelGroup
    from adapmtl_cli.sparsity.channel_gates import GatedGroup

    sizes = [16, 10, 7]  # 7 < 2 * 4: pruned channel by channel
    groups, offset = [], 0
    for i, n in enumerate(sizes):
        groups.append(GatedGroup(ChannelGroup(f"g{i}", n, ()), "c", offset))
        offset += n
    r = torch.rand(offset, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.01
    q = rank_scores(r, groups, multiple=4)
    seen: dict[int, set[int]] = {n: set() for n in sizes}
    for t in torch.linspace(0.0, 0.999, 400).tolist():
        for g, n in zip(groups, sizes, strict=True):
            part = q[g.offset : g.offset + n]
            seen[n].add(int((part > t).sum()))
    # (0 only past the top chunk's score, which refresh_ lifts to 1 so that no threshold reaches it)
    assert seen[16] == {16, 12, 8, 4, 0} and seen[10] == {10, 8, 4, 0}
    assert seen[7] == set(range(8))
    for g, n in zip(groups[:2], sizes[:2], strict=True):  # chunks follow the norms: weaker chunks go first
        part, norms = q[g.offset : g.offset + n], r[g.offset : g.offset + n]
        weaker = norms[:, None] < norms[None, :]
        assert bool((part[:, None] <= part[None, :])[weaker].all())


def test_a_channel_run_keeps_multiples_of_four_in_wide_groups_and_stays_exact_in_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 2, 1),
    )  # fmt: skip
    pruning = adapmtl.prepare(model, X, tasks=["out"], outputs=["out"], sparsity=0.5, steps=6, structure="channel")
    _train(pruning, 6)
    summary = pruning.channels()
    assert summary is not None
    kept = {root: len(k) for root, k in summary["keep"].items()}
    assert all(v % 4 == 0 for v in kept.values()), kept
    assert abs(summary["achieved"] - 0.5) <= 2 / 28  # the closest count whole chunks reach
    baked = pruning.finalize().eval()
    smaller = remove_channels(baked, X, summary["keep"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(smaller(X), baked(X), rtol=0, atol=1e-5)


def test_rank_scores_rank_by_the_order_key_when_one_is_given() -> None:
    from adapmtl_cli.model.channels import ChannelGroup
    from adapmtl_cli.sparsity.channel_gates import GatedGroup

    groups = [GatedGroup(ChannelGroup(f"g{i}", n, ()), "c", off) for i, (n, off) in enumerate([(4, 0), (8, 4)])]
    r = torch.tensor([0.3, 0.1, 0.05, 0.2, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25])
    key = torch.arange(12, dtype=torch.float32)  # the opposite order of the norms in the second group
    q = rank_scores(r, groups, multiple=1, order=key)
    for g in groups:
        part = q[g.offset : g.offset + g.group.channels]
        assert torch.equal(torch.argsort(part), torch.arange(g.group.channels))  # by the key, not by r
    for t in (0.25, 0.5, 0.75):  # still the same fraction of every group per threshold
        assert [int((q[g.offset : g.offset + g.group.channels] <= t).sum()) for g in groups] == [4 * t, 8 * t]


@pytest.mark.parametrize("rank_by", ["taylor", "norm*taylor"])
def test_the_taylor_rank_key_is_each_channels_taylor_score_at_full_strength(
    monkeypatch: pytest.MonkeyPatch, rank_by: str
) -> None:
    from adapmtl_cli.methods import channel_pruner
    from adapmtl_cli.sparsity.channel_gates import raw_weight_taylor

    monkeypatch.setattr(channel_pruner, "RANK_BY", rank_by)
    pruning = _prepare("multitask", 0.5, 8)
    cm = pruning.pruner.cm  # type: ignore[attr-defined]
    orders: list[torch.Tensor] = []  # the key refresh_ ranked by, from the norms it saw
    refresh = cm.refresh_
    monkeypatch.setattr(
        cm, "refresh_", lambda order=None: (orders.append(order(cm.normalised_norms()).clone()), refresh(order))[1]
    )
    opt = torch.optim.Adam(pruning.param_groups(lr=1e-2))
    for step in range(4):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 + step))
        loss = pruning.weigh({t: v.pow(2).mean() for t, v in _outputs(pruning.model(x)).items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        before, gates = cm.get_buffer("taylor_key").clone(), cm.gates().detach()
        taylor = raw_weight_taylor(cm)
        pruning.step()
        beta = channel_pruner.TAYLOR_SMOOTHING
        full = torch.where(gates > 0, taylor / gates.clamp_min(channel_pruner.TAYLOR_MIN_GATE), 0.0)
        key = cm.get_buffer("taylor_key")
        assert torch.allclose(key, beta * before + (1 - beta) * full)
        expected = key * cm.normalised_norms() if rank_by == "norm*taylor" else key
        assert torch.allclose(orders[-1], expected)  # what the rank scores were ranked by
        assert bool(taylor.any()) and bool((cm.get_buffer("taylor_key")[gates == 0] <= before[gates == 0]).all())
