"""``--settle mask``: where the ramp ends the kept weights are fixed, the survivors fine-tune, the target holds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adapmtl_cli as adapmtl
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods import settle_name
from adapmtl_cli.sparsity.settle import SETTLED_LOGIT, SettledMask

STEPS, RAMP_END, SPARSITY = 20, 0.5, 0.8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.a = nn.Conv2d(8, 2, 1)
        self.b = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.stem(x)
        return {"a": self.a(h), "b": self.b(h)}


def _data() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.rand(4, 3, 8, 8, generator=g), {"a": torch.rand(4, 2, 8, 8, generator=g), "b": torch.rand(4, 1, 8, 8)})
        for _ in range(3)
    ]


def _run(settle: str | None, steps: int = STEPS, on_step=None) -> adapmtl.Pruning:  # noqa: ANN001
    data = _data()
    pruning = adapmtl.prepare(
        Net(), data[0][0], tasks=["a", "b"], sparsity=SPARSITY, steps=STEPS, ramp_end=RAMP_END,
        layer_scale="none", weighting="equal", settle=settle,
    )  # fmt: skip
    opt = torch.optim.Adam(pruning.param_groups(lr=1e-2))  # momentum: pruned weights would drift without the hold
    for step in range(steps):
        x, y = data[step % len(data)]
        out = pruning.model(x)
        loss = pruning.weigh({t: F.mse_loss(out[t], y[t]) for t in ("a", "b")})
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruning.step()
        if on_step is not None:
            on_step(step + 1, pruning)
    return pruning


def _zeros(pruning: adapmtl.Pruning) -> dict[str, torch.Tensor]:
    tm = pruning.pruner.module  # type: ignore[attr-defined]
    return {f: (tm.soft_threshold(f)(tm.raw_weight(f).detach()) == 0) for f in tm.groups}


def test_the_mask_is_fixed_from_the_ramp_s_end_and_the_target_holds_to_the_last_step() -> None:
    seen: dict[int, dict[str, torch.Tensor]] = {}
    sparsities: dict[int, float] = {}

    def record(step: int, pruning: adapmtl.Pruning) -> None:
        seen[step] = _zeros(pruning)
        sparsities[step] = pruning.sparsity()["overall"]

    pruning = _run("mask", on_step=record)
    hold = round(STEPS * RAMP_END)
    for step in range(hold, STEPS + 1):
        assert sparsities[step] == pytest.approx(SPARSITY, abs=1e-3), step  # exact at every step after the ramp
        for f, zeros in seen[step].items():
            assert torch.equal(zeros, seen[hold][f]), (step, f)  # the same weights, not only the same count
    assert not all(torch.equal(seen[hold - 1][f], seen[hold][f]) for f in seen[hold])  # it moved before
    tm = pruning.pruner.module  # type: ignore[attr-defined]
    settled = tm.settled
    assert isinstance(settled, SettledMask) and bool(settled.done)
    assert all(float(tm.bank.logit(g).detach()) == SETTLED_LOGIT for g in tm.bank.groups)
    # The report keeps the thresholds the mask was fixed with, not the ~0 ones the fixed phase runs on.
    report = pruning.report()
    assert all(x["threshold"] > 1e-4 for x in report["layers"])
    assert all(t > 1e-4 for t in pruning.pruner.thresholds().values())  # type: ignore[attr-defined]
    assert report["settle"] == "mask"
    model = pruning.finalize()
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d))
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert zeros == round(SPARSITY * total)


def test_settling_changes_no_output_and_the_survivors_then_train() -> None:
    outputs: dict[str, torch.Tensor] = {}
    x = _data()[0][0]
    hold = round(STEPS * RAMP_END)
    values: dict[int, torch.Tensor] = {}

    def record(step: int, pruning: adapmtl.Pruning) -> None:
        tm = pruning.pruner.module  # type: ignore[attr-defined]
        values[step] = tm.soft_threshold("a")(tm.raw_weight("a").detach()).clone()

    pruning = _run("mask", steps=hold, on_step=record)
    with torch.no_grad():
        outputs.update(pruning.model(x))
    tm = pruning.pruner.module  # type: ignore[attr-defined]
    raw = {f: tm.raw_weight(f).detach().clone() for f in tm.groups}
    for f in tm.groups:  # the raw weights are the thresholded values now
        assert torch.equal(tm.soft_threshold(f)(raw[f]), raw[f])
    assert torch.equal(values[hold], raw["a"])
    full = _run("mask", on_step=record)
    assert not torch.equal(values[STEPS], values[hold])  # the survivors go on learning
    assert torch.equal(values[STEPS] == 0, values[hold] == 0)
    del full


def test_thresholds_keep_moving_with_settle_thresholds() -> None:
    seen: dict[int, dict[str, float]] = {}
    pruning = _run("thresholds", on_step=lambda step, p: seen.__setitem__(step, p.pruner.thresholds()))
    hold = round(STEPS * RAMP_END)
    assert seen[STEPS] != seen[hold]  # the controller re-fits the level after every step
    assert getattr(pruning.pruner.module, "settled", None) is None


def test_a_resumed_pruning_holds_the_same_mask() -> None:
    data = _data()
    first = _run("mask", steps=15)
    state = first.state_dict()
    again = adapmtl.prepare(
        Net(), data[0][0], tasks=["a", "b"], sparsity=SPARSITY, steps=STEPS, ramp_end=RAMP_END,
        layer_scale="none", weighting="equal", settle="mask",
    )  # fmt: skip
    tm = again.pruner.module  # type: ignore[attr-defined]
    assert not tm.settled.is_done()  # read (and remembered) before the load: the load must clear it
    again.load_state_dict(state)
    assert bool(tm.settled.done) and tm.settled.is_done()
    with torch.no_grad():  # what an optimizer's momentum does to a pruned weight
        for f in tm.groups:
            tm.raw_weight(f).add_(1e-3)
    reported = again.step({"a": 0.1, "b": 0.1})
    assert reported == pytest.approx(again.sparsity()["overall"], abs=1e-9)
    assert reported == pytest.approx(first.sparsity()["overall"], abs=1e-9)
    for f, zeros in _zeros(again).items():
        assert torch.equal(zeros, _zeros(first)[f]), f


def test_defaults_and_refusals() -> None:
    assert settle_name("adapmtl", None) == "mask"
    assert settle_name("str_global", None) == settle_name("adapmtl_paper", None) == "thresholds"
    assert settle_name("adapmtl", "thresholds") == "thresholds"
    assert settle_name("gmp", None) is None and settle_name("adapmtl", None, "channel") is None
    x = _data()[0][0]
    with pytest.raises(ConfigError, match="prunes with masks"):
        adapmtl.prepare(Net(), x, tasks=["a", "b"], method="gmp", settle="mask")
    with pytest.raises(ConfigError, match="not one of"):
        adapmtl.prepare(Net(), x, tasks=["a", "b"], layer_scale="none", settle="freeze")


def test_a_state_saved_before_the_fixed_mask_phase_existed_loads_and_settles_at_the_next_step() -> None:
    old = _run("thresholds", steps=15)  # past the ramp's end, as a run saved by an earlier version
    state = {**old.state_dict(), "model": dict(old.state_dict()["model"])}
    again = adapmtl.prepare(
        Net(), _data()[0][0], tasks=["a", "b"], sparsity=SPARSITY, steps=STEPS, ramp_end=RAMP_END,
        layer_scale="none", weighting="equal", settle="mask",
    )  # fmt: skip
    again.load_state_dict(state)
    tm = again.pruner.module  # type: ignore[attr-defined]
    assert not bool(tm.settled.done) and not tm.settled.is_done()
    again.step({"a": 0.1, "b": 0.1})
    assert tm.settled.is_done() and again.sparsity()["overall"] == pytest.approx(SPARSITY, abs=1e-3)
