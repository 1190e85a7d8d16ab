"""``inspect`` as a dry run: modules left unpruned with their reason, and the measured step estimate."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from tiny_models import HardShared
from torch import nn

from adapmtl_cli.config import PruneConfig, make_prune_config
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.jobs.inspect import estimate_step, not_pruned
from adapmtl_cli.jobs.prepare import Prepared, prepare
from adapmtl_cli.methods import METHODS
from adapmtl_cli.model.discover import discover_components

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, invoke, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


class WithExtras(HardShared):
    """Hard sharing plus a frozen conv, an embedding nobody reads and a LayerNorm-free aux conv nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Conv2d(16, 16, 1)
        self.frozen.requires_grad_(False)
        self.unused = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.frozen(self.encoder(x))
        return {t: head(feat) for t, head in self.heads.items()}


def _prepared(model: nn.Module, exclude: tuple[str, ...] = ()) -> Prepared:
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    outputs = model(x)
    cmap = discover_components(model, outputs, list(outputs), exclude=exclude)
    return types.SimpleNamespace(loaded=types.SimpleNamespace(model=model), cmap=cmap)  # type: ignore[return-value]


def test_not_pruned_names_each_module_with_its_reason() -> None:
    torch.manual_seed(0)
    items = not_pruned(_prepared(WithExtras(), exclude=("heads.depth.2",)))
    reasons = {x.name: (x.reason, x.type) for x in items}
    assert reasons["heads.depth.2"] == ("excluded", "Conv2d")
    assert reasons["unused"] == ("unreached", "Conv2d")
    assert reasons["frozen"] == ("frozen", "Conv2d")
    assert reasons["encoder.0.1"] == ("type not prunable", "BatchNorm2d")
    assert {x.reason for x in items} == {"excluded", "unreached", "frozen", "type not prunable"}
    assert next(x for x in items if x.name == "unused").params == 3 * 4 + 4
    assert "encoder.0.0" not in reasons  # pruned


@pytest.fixture(scope="module")
def prepared(checkpoint: Path, scenes: Path) -> Prepared:
    return prepare(str(checkpoint), factory=FACTORY, trust_pickle=False, data="synthetic", data_dir=str(scenes))


def _planned(**options: object) -> PruneConfig:
    return make_prune_config(checkpoint="-", data_dir="-", out="-", device="cpu", **options)


def test_estimate_uses_the_planned_threshold_lr_and_precision(prepared: Prepared) -> None:
    seen = []
    real = torch.optim.Adam.__init__

    def spy(self, params, *args, **kwargs):  # type: ignore[no-untyped-def]
        params = list(params)
        seen.append(sorted(g["lr"] for g in params))
        real(self, params, *args, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(torch.optim.Adam, "__init__", spy):
        planned = _planned(batch_size=2, steps=10, lr=1e-4, threshold_lr=0.003, allocation="adam")
        estimate_step(prepared, planned, timed_steps=1)
        estimate_step(prepared, _planned(batch_size=2, steps=10, lr=1e-4, threshold_lr=0.003), timed_steps=1)
    assert seen == [[1e-4, 0.003], [0.0, 1e-4]]  # the default (marginal) moves the thresholds by its own rule
    with pytest.raises(ConfigError, match="--precision fp16 is not supported on cpu"):
        estimate_step(prepared, _planned(batch_size=2, steps=10, precision="fp16"), timed_steps=1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_estimate_runs_every_method_on_a_real_batch(prepared: Prepared, method: str) -> None:
    before = {k: v.clone() for k, v in prepared.loaded.model.state_dict().items()}
    est = estimate_step(prepared, _planned(method=method, batch_size=2, steps=100, sparsity=0.9), timed_steps=1)
    assert est.method == method and est.batch_size == 2 and est.device == "cpu"
    assert 0 < est.seconds_per_step < 60
    assert est.total_seconds == pytest.approx(100 * est.seconds_per_step)
    assert est.peak_memory_bytes > 10 * 2**20 and est.memory_kind == "process resident memory"
    after = prepared.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # timed on a copy


def test_estimate_builds_the_planned_layer_scale(prepared: Prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    import adapmtl_cli.api as api

    seen = []
    real = api.build_pruner

    def spy(method, ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.layer_scale)
        return real(method, ctx)

    monkeypatch.setattr(api, "build_pruner", spy)
    estimate_step(prepared, _planned(batch_size=2, steps=10, sparsity=0.9), timed_steps=1)
    estimate_step(prepared, _planned(batch_size=2, steps=10, sparsity=0.9, layer_scale="none"), timed_steps=1)
    assert seen == [None, "none"]  # None: the method's own default (saliency for adapmtl)


def test_estimate_refuses_a_batch_larger_than_the_split(prepared: Prepared) -> None:
    from adapmtl_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="--batch-size 1000 is larger than the train split"):
        estimate_step(prepared, _planned(batch_size=1000, steps=10, sparsity=0.5))


def test_inspect_shows_the_unpruned_modules_and_the_estimate(checkpoint: Path, scenes: Path) -> None:
    args = ("--factory", FACTORY, "--data-dir", scenes, "--exclude", "backbone.stem*", "--batch-size", 2)
    result = invoke("inspect", checkpoint, *args, "--steps", 50, "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Not pruned" in out and "backbone.stem.0 (Conv2d)" in out and "× BatchNorm2d" in out
    line = next(x for x in out.splitlines() if x.startswith("Estimate "))
    assert "adapmtl at --batch-size 2 on cpu:" in line and "s per step" in line and "for 50 steps" in line
    assert "MiB" in line
    assert result.stderr == ""


def test_inspect_no_estimate(checkpoint: Path, scenes: Path) -> None:
    result = invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--no-estimate")
    assert result.exit_code == 0, result.output
    assert "Estimate" not in result.stdout and "Not pruned" in result.stdout


def test_inspect_reads_the_planned_runs_config(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    path = tmp_path / "prune.toml"
    path.write_text(
        f'checkpoint = "{checkpoint}"\nfactory = "{FACTORY}"\ndata_dir = "{scenes}"\nout = "runs/x"\n'
        'batch_size = 3\nsteps = 40\ndevice = "cpu"\nmethod = "gmp"\n',
        encoding="utf-8",
    )
    result = invoke("inspect", "--config", path)
    assert result.exit_code == 0, result.output
    assert "gmp at --batch-size 3 on cpu:" in result.stdout and "for 40 steps" in result.stdout
    path.write_text(path.read_text() + "colour = 1\n", encoding="utf-8")
    assert "unknown keys 'colour'" in user_error(invoke("inspect", "--config", path))
