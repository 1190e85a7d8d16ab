"""The public API: prune inside a plain-PyTorch loop with the user's own model class, losses and data."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adapmtl_cli as adapmtl
from adapmtl_cli.config import RunReport
from adapmtl_cli.errors import ConfigError, DiscoveryError
from adapmtl_cli.methods import METHODS, STRUCTURES


class TwoTaskNet(nn.Module):
    """The user's own model: a shared encoder, a segmentation head and a depth head; returns a dict."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.seg = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 5, 1))
        self.depth = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        seg, depth = self.seg(h), self.depth(h)
        return (seg, depth) if self.as_tuple else {"seg": seg, "depth": depth}


TASKS = ["seg", "depth"]
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "seg": lambda out, y: F.cross_entropy(out, y),
    "depth": lambda out, y: F.l1_loss(out, y),
}


def _data(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(4, 3, 16, 16, generator=g)
        out.append((x, {"seg": (x[:, 0] * 5).long().clamp(max=4), "depth": x[:, 1:2] * 2}))
    return out


def _train(pruning: adapmtl.Pruning, steps: int, data: list | None = None) -> None:
    opt = torch.optim.Adam(pruning.param_groups(lr=1e-3))
    for x, y in itertools.islice(itertools.cycle(data or _data()), steps):
        out = pruning.model(x)
        if isinstance(out, tuple):
            out = dict(zip(TASKS, out, strict=True))
        loss = pruning.weigh({t: LOSSES[t](out[t], y[t]) for t in TASKS})
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruning.step()


def _overall(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_a_plain_pytorch_loop_prunes_to_the_target(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoTaskNet()
    keys = list(model.state_dict())
    data = _data()
    pruning = adapmtl.prepare(model, data[0][0], tasks=TASKS, sparsity=0.9, steps=20, calibration=data, losses=LOSSES)
    assert pruning.model(data[0][0]).keys() == {"seg", "depth"}  # same forward, same outputs
    _train(pruning, 20, data)
    assert abs(pruning.sparsity()["overall"] - 0.9) <= 0.001
    pruned = pruning.finalize()
    assert type(pruned) is TwoTaskNet and pruned is model
    assert list(pruned.state_dict()) == keys  # same keys, same order (weight before bias again)
    assert all(type(p) is nn.Parameter for p in pruned.parameters())
    assert not any(hasattr(m, "parametrizations") for m in pruned.modules())
    assert abs(_overall(pruned) - 0.9) <= 0.001
    assert pruning.sparsity()["overall"] == pytest.approx(_overall(pruned))
    comps = pruning.sparsity()["components"]
    assert set(comps) == {"backbone", "head:seg", "head:depth"}
    path = tmp_path / "m.sparse.safetensors"
    adapmtl.save_sparse(pruned.state_dict(), path)
    loaded = adapmtl.load_sparse(path)
    assert list(loaded) == keys
    assert all(torch.equal(loaded[k], v) for k, v in pruned.state_dict().items())


def test_report_has_report_json_sparsity_fields() -> None:
    torch.manual_seed(0)
    data = _data()
    pruning = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, sparsity=0.8, steps=6, layer_scale="none")
    _train(pruning, 6, data)
    pruning.finalize()
    report = pruning.report()
    assert set(report) <= set(RunReport.model_fields)
    assert report["method"] == "adapmtl" and report["weighting"] == "norm" and report["layer_scale"] == "none"
    assert report["zeros"] == sum(c["zeros"] for c in report["components"])
    assert abs(report["overall_sparsity"] - 0.8) <= 0.001
    assert sum(report["task_weights"].values()) == pytest.approx(2.0)
    assert [layer["name"] for layer in report["layers"]][:2] == ["encoder.0", "encoder.3"]


def test_tuple_outputs_are_read_in_task_order_or_by_outputs() -> None:
    torch.manual_seed(0)
    data = _data()
    pruning = adapmtl.prepare(TwoTaskNet(as_tuple=True), data[0][0], tasks=TASKS, steps=4, layer_scale="none")
    assert pruning.discovery.mapping.paths == {"seg": (0,), "depth": (1,)}
    swapped = adapmtl.prepare(
        TwoTaskNet(as_tuple=True), data[0][0], tasks=["depth", "seg"], outputs=["seg", "depth"], layer_scale="none"
    )
    assert swapped.discovery.mapping.paths == {"depth": (1,), "seg": (0,)}
    _train(pruning, 4, data)
    assert abs(_overall(pruning.finalize()) - 0.9) <= 0.001


def test_without_calibration_saliency_methods_say_what_they_need() -> None:
    x = _data()[0][0]
    with pytest.raises(ConfigError, match="calibration=.*losses=.*layer_scale='none'"):
        adapmtl.prepare(TwoTaskNet(), x, tasks=TASKS)
    with pytest.raises(ConfigError, match="method 'disparse' scores weights by task saliency"):
        adapmtl.prepare(TwoTaskNet(), x, tasks=TASKS, method="disparse")
    with pytest.raises(ConfigError, match="losses has no function for task 'depth'"):
        adapmtl.prepare(TwoTaskNet(), x, tasks=TASKS, calibration=_data(), losses={"seg": LOSSES["seg"]})
    adapmtl.prepare(TwoTaskNet(), x, tasks=TASKS, method="gmp")  # magnitude methods need no calibration


def test_calibration_changes_the_layer_scales() -> None:
    data = _data()
    torch.manual_seed(0)
    scaled = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, calibration=data, losses=LOSSES)
    torch.manual_seed(0)
    raw = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, layer_scale="none")
    scales = [float(scaled.pruner.tm.layer_scale(f)) for f in scaled.pruner.tm.groups]  # type: ignore[attr-defined]
    assert any(abs(s - 1.0) > 1e-3 for s in scales)
    assert all(float(raw.pruner.tm.layer_scale(f)) == 1.0 for f in raw.pruner.tm.groups)  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", sorted(m for m in METHODS if "weight" in STRUCTURES[m]))
def test_every_registered_method_lands_on_the_target(method: str) -> None:
    """Every method that prunes weights (channel runs: tests/sparsity/test_channel_gates.py)."""
    torch.manual_seed(0)
    data = _data()
    pruning = adapmtl.prepare(
        TwoTaskNet(), data[0][0], tasks=TASKS, sparsity=0.7, steps=8, method=method, calibration=data, losses=LOSSES
    )
    _train(pruning, 8, data)
    model = pruning.finalize()
    assert abs(_overall(model) - 0.7) <= 0.001, method
    assert pruning.report()["method"] == method


def test_finalize_before_the_last_step_still_lands_on_the_target() -> None:
    torch.manual_seed(0)
    data = _data()
    pruning = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, sparsity=0.85, steps=100, layer_scale="none")
    _train(pruning, 3, data)
    assert pruning.sparsity()["overall"] < 0.5  # still on the ramp
    assert abs(_overall(pruning.finalize()) - 0.85) <= 0.001


def test_a_ddp_wrapped_model_is_looked_through(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        inner = TwoTaskNet()
        wrapped = nn.parallel.DistributedDataParallel(inner)
        data = _data()
        pruning = adapmtl.prepare(wrapped, data[0][0], tasks=TASKS, sparsity=0.6, steps=4, layer_scale="none")
        _train(pruning, 4, data)
        model = pruning.finalize()
    finally:
        dist.destroy_process_group()
    assert model is inner and abs(_overall(model) - 0.6) <= 0.001


def test_torch_compile_on_the_model_trains_and_lands_on_the_target() -> None:
    torch.manual_seed(0)
    data = _data()
    pruning = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, sparsity=0.75, steps=4, layer_scale="none")
    compiled = torch.compile(pruning.model, backend="eager")
    opt = torch.optim.Adam(pruning.param_groups(lr=1e-3))
    for x, y in data[:4]:
        out = compiled(x)
        loss = pruning.weigh({t: LOSSES[t](out[t], y[t]) for t in TASKS})
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruning.step()
    assert abs(_overall(pruning.finalize()) - 0.75) <= 0.001


def test_the_thresholds_learn_at_their_own_rate() -> None:
    x = _data()[0][0]
    kwargs = {"tasks": TASKS, "layer_scale": "none", "threshold_lr": 0.003}
    pruning = adapmtl.prepare(TwoTaskNet(), x, allocation="adam", **kwargs)
    groups = pruning.param_groups(lr=1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 0.003]
    assert [g["lr"] for g in pruning.param_groups(lr=1e-4, threshold_lr=0.01)] == [1e-4, 0.01]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in pruning.model.parameters())
    # the default (marginal) moves the logits by its own rule after each step: Adam must not step them too
    default = adapmtl.prepare(TwoTaskNet(), x, **kwargs)
    assert default.settings.allocation == "marginal"
    assert [g["lr"] for g in default.param_groups(lr=1e-4)] == [1e-4, 0.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "nope"}, "unknown method 'nope'; choose one of: adapmtl"),
        ({"sparsity": 1.5}, "sparsity must be a fraction in \\(0, 1\\), got 1.5"),
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"tasks": []}, "tasks must be a non-empty list"),
        ({"tasks": "seg"}, "tasks must be a non-empty list"),
        ({"tasks": ["seg", "seg"]}, "tasks name one task twice"),
        ({"weighting": "loud"}, "weighting 'loud' is not one of adaptive, paper, equal"),
        ({"component_sparsity": {"backbone": (0.95, 1.0)}, "method": "gmp"}, "--component-sparsity needs one"),
    ],
)
def test_bad_options_are_refused_with_one_line(options: dict, message: str) -> None:
    kwargs = {"tasks": TASKS, "layer_scale": "none", **options}
    if kwargs.get("method") not in (None, "adapmtl", "str_global", "str_layer"):
        kwargs.pop("layer_scale")
    with pytest.raises(ConfigError, match=message):
        adapmtl.prepare(TwoTaskNet(), _data()[0][0], **kwargs)


def test_outputs_that_match_no_task_are_a_discovery_error() -> None:
    with pytest.raises(DiscoveryError, match="cannot tell which output is task 'normal'"):
        adapmtl.prepare(TwoTaskNet(), _data()[0][0], tasks=["seg", "normal"], layer_scale="none")

    class Broken(TwoTaskNet):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            raise RuntimeError("boom")

    with pytest.raises(DiscoveryError, match="forward failed on the example input.*boom"):
        adapmtl.prepare(Broken(), _data()[0][0], tasks=TASKS)


def test_misuse_of_the_loop_is_refused() -> None:
    data = _data()
    pruning = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, layer_scale="none", steps=2)
    with pytest.raises(ConfigError, match="step\\(\\) before weigh\\(\\)"):
        pruning.step()
    out = pruning.model(data[0][0])
    with pytest.raises(ConfigError, match="weigh got no loss for task 'depth'"):
        pruning.weigh({"seg": LOSSES["seg"](out["seg"], data[0][1]["seg"])})
    pruning.finalize()
    with pytest.raises(ConfigError, match="finalized"):
        pruning.step({"seg": 1.0, "depth": 1.0})
    with pytest.raises(ConfigError, match="finalized"):
        _ = pruning.model


def test_the_user_model_keeps_its_mode_and_statistics_through_discovery() -> None:
    model = TwoTaskNet().train()
    before = model.encoder[1].running_mean.clone()
    adapmtl.discover(model, _data()[0][0], TASKS)
    assert model.training and torch.equal(model.encoder[1].running_mean, before)


def test_state_dict_round_trip_resumes_the_schedule() -> None:
    torch.manual_seed(0)
    data = _data()
    first = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, sparsity=0.8, steps=10, layer_scale="none")
    _train(first, 5, data)
    state = first.state_dict()
    torch.manual_seed(0)
    second = adapmtl.prepare(TwoTaskNet(), data[0][0], tasks=TASKS, sparsity=0.8, steps=10, layer_scale="none")
    second.load_state_dict(state)
    assert second.step_count == 5 and second.task_weights() == first.task_weights()
    assert second.sparsity() == first.sparsity()


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- api-example:start -->", 1)[1].split("<!-- api-example:end -->", 1)[0]
    code = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    pruning = namespace["pruning"]
    assert abs(pruning.sparsity()["overall"] - 0.9) <= 0.001
    assert type(namespace["model"]).__name__ == "Net" and (tmp_path / "m.sparse.safetensors").is_file()


def test_every_public_name_resolves_from_the_package() -> None:
    import adapmtl_cli
    from adapmtl_cli import api
    from adapmtl_cli.export.latency import measure_latency

    for name in set(adapmtl_cli.__all__) - {"__version__"}:
        assert getattr(adapmtl_cli, name) is getattr(api, name)
    assert adapmtl_cli.measure_latency is measure_latency
