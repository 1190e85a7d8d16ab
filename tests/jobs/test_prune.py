"""The prune pipeline end to end: acceptance of the shared run, and resuming an interrupted run exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.jobs.prepare import Hooks, components_manifest, prepare
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES
from adapmtl_cli.tasks.scores import DELTA_T_BOUNDED_CONVENTION
from adapmtl_cli.tasks.segmentation import Segmentation
from adapmtl_cli.train.evaluate import evaluate, evaluate_with_diagnostics

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import (  # noqa: E402
    COMPONENTS,
    FACTORY,
    TARGET,
    TASKS,
    CliRun,
    copy_run,
    prune_config,
    read_metrics,
    read_report,
)

pytest_plugins = ["fixtures_e2e"]


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


# --- acceptance of the shared run --------------------------------------------------------------------


def test_overall_sparsity_hits_the_target(pruned_run: CliRun) -> None:
    rep = read_report(pruned_run.path)
    assert rep.target_sparsity == TARGET
    assert abs(rep.overall_sparsity - TARGET) <= 0.005  # the acceptance bound
    assert abs(rep.overall_sparsity - TARGET) <= 0.001  # what the level controller promises (ties only)


def test_every_component_reports_its_sparsity(pruned_run: CliRun) -> None:
    rep = read_report(pruned_run.path)
    assert sorted(c.name for c in rep.components) == sorted(COMPONENTS)
    for c in rep.components:
        assert c.params > 0 and 0 <= c.zeros <= c.params
        assert c.sparsity == pytest.approx(c.zeros / c.params)
        assert c.threshold is not None and c.threshold > 0
    assert sum(c.zeros for c in rep.components) == rep.zeros
    assert sum(c.params for c in rep.components) == rep.prunable_params
    # One threshold per component, each started at its own magnitude quantile. (How the split moves is tested in
    # tests/sparsity/test_allocation.py: on this briefly trained model pruning lowers the loss at first, and the
    # marginal rule holds the split while the average marginal cost is not positive.)
    assert len({round(c.threshold, 4) for c in rep.components}) == len(rep.components)


def test_delta_t_and_task_metrics_are_present(pruned_run: CliRun) -> None:
    rep = read_report(pruned_run.path)
    assert sorted(rep.tasks) == sorted(TASKS)
    for tm in rep.tasks.values():
        assert tm.dense.keys() == tm.pruned.keys() == tm.higher_is_better.keys()
        assert all(math.isfinite(v) for v in [*tm.dense.values(), *tm.pruned.values()])
    # Δ_T recomputed from the report's own numbers: per task, sum of ±(pruned − dense)/dense × 100 over its
    # metrics whose dense value is non-zero, then the mean over tasks.
    expected: dict[str, float] = {}
    skipped = []
    for task, tm in rep.tasks.items():
        for metric, base in tm.dense.items():
            if base == 0:
                skipped.append(f"{task}.{metric}")
                continue
            sign = 1.0 if tm.higher_is_better[metric] else -1.0
            expected[task] = expected.get(task, 0.0) + sign * (tm.pruned[metric] - base) / base * 100.0
    dt = rep.delta_t
    assert math.isfinite(dt.overall)
    assert dt.per_task == pytest.approx(expected)
    assert sorted(dt.skipped) == sorted(skipped)
    assert dt.overall == pytest.approx(sum(expected.values()) / len(expected))
    assert sorted(rep.task_weights) == sorted(TASKS)


def test_bounded_delta_t_is_delta_t_with_each_change_clipped(pruned_run: CliRun) -> None:
    rep = read_report(pruned_run.path)
    expected: dict[str, float] = {}
    for task, tm in rep.tasks.items():
        for metric, base in tm.dense.items():
            if base == 0:
                continue
            sign = 1.0 if tm.higher_is_better[metric] else -1.0
            change = sign * (tm.pruned[metric] - base) / base * 100.0
            expected[task] = expected.get(task, 0.0) + max(-100.0, min(100.0, change))
    bounded = rep.scores["delta_t_bounded"]
    assert bounded.per_task == pytest.approx(expected)
    assert bounded.overall == pytest.approx(sum(expected.values()) / len(expected))
    assert bounded.higher_is_better and bounded.convention == DELTA_T_BOUNDED_CONVENTION
    assert list(rep.scores) == ["delta_t_bounded", "delta_m", "delta_p"]


def test_collapse_flags_follow_the_reports_numbers(pruned_run: CliRun) -> None:
    rep = read_report(pruned_run.path)
    assert sorted(rep.collapsed) == sorted(TASKS)
    for task, tm in rep.tasks.items():
        blowup = any(
            not tm.higher_is_better[m] and base > 0 and tm.pruned[m] > 3 * base for m, base in tm.dense.items()
        )
        assert rep.collapsed[task] or not blowup, task
    for task, flag in rep.collapsed.items():  # each collapsed task says why in the warnings
        assert flag == any(w.startswith(f"task {task} collapsed: ") for w in rep.warnings)


def test_dense_metrics_json_keeps_only_the_metrics(pruned_run: CliRun) -> None:
    saved = json.loads((pruned_run.path / "dense_metrics.json").read_text())
    assert saved == {task: tm.dense for task, tm in read_report(pruned_run.path).tasks.items()}


def test_evaluation_gives_the_class_counts_beside_unchanged_metrics(checkpoint: Path, scenes: Path) -> None:
    prepared = prepare(str(checkpoint), factory=FACTORY, trust_pickle=False, data="synthetic", data_dir=str(scenes))
    model, cpu = prepared.loaded.model, torch.device("cpu")
    result = evaluate_with_diagnostics(model, prepared.val, prepared.tasks, prepared.mapping, cpu, 4)
    assert result.metrics == evaluate(model, prepared.val, prepared.tasks, prepared.mapping, cpu, 4)
    assert list(result.diagnostics) == ["segmentation"]  # depth and normal meters have none
    seg = next(t for t in prepared.tasks if t.name == "segmentation")
    counts = result.diagnostics["segmentation"]
    assert isinstance(seg, Segmentation) and set(counts) == {PREDICTED_CLASSES, LABEL_CLASSES}
    assert 1 <= counts[PREDICTED_CLASSES] <= seg.num_classes and 1 <= counts[LABEL_CLASSES] <= seg.num_classes


def test_a_single_predicted_class_reaches_the_report(
    pruned_run: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pruned model's meter diagnostics travel through the job into ``collapsed`` and the warnings."""
    from adapmtl_cli.tasks import segmentation

    run = copy_run(pruned_run.path, tmp_path / "run")
    (run / "report.json").unlink()
    monkeypatch.setattr(
        segmentation._ConfusionMeter, "diagnostics", lambda self: {PREDICTED_CLASSES: 1, LABEL_CLASSES: 5}
    )
    rep = run_prune(prune_config(Path("unused.pt"), Path("unused"), run), resume=True)
    assert rep.collapsed["segmentation"] is True
    assert "task segmentation collapsed: predicts a single class over the whole split while the labels hold 5" in (
        "; ".join(rep.warnings)
    )
    assert read_report(run).collapsed == rep.collapsed


def test_report_zero_count_equals_zeros_in_the_pruned_weights(pruned_run: CliRun) -> None:
    rep = read_report(pruned_run.path)
    weights = load_file(str(pruned_run.path / "pruned.safetensors"))
    manifest = json.loads((pruned_run.path / "components.json").read_text())
    assert [layer.name for layer in rep.layers] == [layer["name"] for layer in manifest["layers"]]
    total = 0
    for layer in rep.layers:
        w = weights[f"{layer.name}.weight"]
        zeros = int((w == 0).sum())
        assert (zeros, w.numel()) == (layer.zeros, layer.params), layer.name
        total += zeros
    assert total == rep.zeros
    assert sum(layer.params for layer in rep.layers) == rep.prunable_params


def test_pruned_weights_keep_the_users_keys(pruned_run: CliRun, checkpoint: Path) -> None:
    weights = load_file(str(pruned_run.path / "pruned.safetensors"))
    original = torch.load(checkpoint, weights_only=True)
    assert weights.keys() == original.keys()
    assert all(weights[k].shape == original[k].shape for k in original)


def test_metrics_log_follows_the_schedule(pruned_run: CliRun) -> None:
    records = read_metrics(pruned_run.path)
    targets = [r["target"] for r in records]
    assert targets == sorted(targets) and targets[-1] == TARGET
    for r in records:
        assert abs(r["sparsity"] - r["target"]) <= 0.001, r["step"]
        assert sorted(r["group_sparsity"]) == sorted(COMPONENTS)
        assert sorted(r["task_losses"]) == sorted(TASKS)
        assert all(math.isfinite(v) for v in r["task_losses"].values())


def test_prepare_finds_backbone_and_heads(checkpoint: Path, scenes: Path) -> None:
    prepared = prepare(str(checkpoint), factory=FACTORY, trust_pickle=False, data="synthetic", data_dir=str(scenes))
    manifest = components_manifest(prepared)
    by_name = {c.name: c for c in manifest.components}
    assert sorted(by_name) == sorted(COMPONENTS)
    assert sorted(by_name["backbone"].tasks) == sorted(TASKS)
    for task in TASKS:
        assert by_name[f"head:{task}"].tasks == [task]
    assert manifest.output_mapping == "names"


# --- resume --------------------------------------------------------------------------------------------


def test_resume_after_interruption_matches_the_uninterrupted_run(
    interrupted_run: Path, uninterrupted_run: Path, checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    run = copy_run(interrupted_run, tmp_path / "run")
    resumed = run_prune(prune_config(checkpoint, scenes, run), resume=True)
    want = read_report(uninterrupted_run)
    assert resumed.overall_sparsity == want.overall_sparsity
    assert resumed.zeros == want.zeros
    a = load_file(str(uninterrupted_run / "pruned.safetensors"))
    b = load_file(str(run / "pruned.safetensors"))
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"{len(unequal)} tensors differ, max abs diff {_max_abs_diff(a, b):.3e}"
    assert [c.model_dump() for c in resumed.components] == [c.model_dump() for c in want.components]
    assert resumed.tasks == want.tasks


def test_resumed_metrics_log_equals_the_uninterrupted_one(
    interrupted_run: Path, uninterrupted_run: Path, checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    run = copy_run(interrupted_run, tmp_path / "run")
    run_prune(prune_config(checkpoint, scenes, run), resume=True)
    got, want = read_metrics(run), read_metrics(uninterrupted_run)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]


def test_interrupted_run_left_resumable_state(interrupted_run: Path) -> None:
    assert (interrupted_run / "config.json").is_file()
    assert (interrupted_run / "dense_metrics.json").is_file()
    assert not (interrupted_run / "pruned.safetensors").exists()
    assert not (interrupted_run / "report.json").exists()
    assert torch.load(interrupted_run / "state" / "latest.pt", weights_only=True)["step"] == 12
    assert torch.load(interrupted_run / "state" / "prev.pt", weights_only=True)["step"] == 6


def test_resume_takes_the_saved_config(
    interrupted_run: Path, uninterrupted_run: Path, checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    """Options given with --resume do not override the run's config.json ("its config wins")."""
    run = copy_run(interrupted_run, tmp_path / "run")
    resumed = run_prune(prune_config(checkpoint, scenes, run, sparsity=0.5, steps=30), resume=True)
    assert resumed.target_sparsity == TARGET and resumed.steps == read_report(uninterrupted_run).steps


def test_resume_of_a_finished_run_rebuilds_the_same_weights(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    before = load_file(str(run / "pruned.safetensors"))
    (run / "pruned.safetensors").unlink()
    (run / "report.json").unlink()
    cfg = prune_config(Path("unused.pt"), Path("unused"), run)
    messages: list[str] = []
    rep = run_prune(cfg, resume=True, hooks=Hooks(status=messages.append))
    assert any("already finished" in m for m in messages)
    after = load_file(str(run / "pruned.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert rep.zeros == read_report(pruned_run.path).zeros


def test_run_prune_refuses_an_occupied_folder(pruned_run: CliRun, checkpoint: Path, scenes: Path) -> None:
    with pytest.raises(ConfigError, match="already holds files"):
        run_prune(prune_config(checkpoint, scenes, pruned_run.path))


def test_marginal_allocation_runs_through_the_job_and_resumes_exactly(
    checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    """``--allocation marginal``: the target is exact, the report names the rule, a resume ends bit-identical."""
    options = {"allocation": "marginal", "layer_scale": "none", "steps": 8, "save_every": 4}
    whole = run_prune(prune_config(checkpoint, scenes, tmp_path / "whole", **options))
    assert whole.allocation == "marginal" and abs(whole.overall_sparsity - TARGET) <= 0.001
    part = tmp_path / "part"
    stopped: list[int] = []

    def stop_at_5(info: object) -> None:
        if getattr(info, "step", 0) == 5 and not stopped:
            stopped.append(5)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prune(prune_config(checkpoint, scenes, part, **options), hooks=Hooks(on_step=stop_at_5))
    run_prune(prune_config(checkpoint, scenes, part, **options), resume=True)
    a, b = load_file(str(tmp_path / "whole" / "pruned.safetensors")), load_file(str(part / "pruned.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_allocation_is_refused_for_a_mask_method_before_the_run_folder(
    checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--allocation moves learned thresholds; --method gmp prunes with masks"):
        run_prune(prune_config(checkpoint, scenes, tmp_path / "run", method="gmp", allocation="frozen"))
    assert not (tmp_path / "run").exists()


def test_a_dense_model_at_chance_level_is_named_in_the_report(pruned_run: CliRun, scenes: Path) -> None:
    """The shared run prunes an untrained (seeded) model: the report says which tasks it never learned."""
    from adapmtl_cli.data import get_dataset
    from adapmtl_cli.report.chance import chance_warnings, constant_metrics

    rep = read_report(pruned_run.path)
    adapter = get_dataset("synthetic")
    tasks = adapter.tasks(scenes)
    chance = constant_metrics(adapter.open(scenes, "train"), adapter.open(scenes, "val"), tasks, batch_size=4, seed=0)
    dense = {t: m.dense for t, m in rep.tasks.items()}
    expected = chance_warnings(dense, chance, {t.name: t for t in tasks})
    assert expected, "an untrained model should be at chance on some task"
    assert [w for w in rep.warnings if "at chance level" in w] == expected
