"""The ``adapmtl`` command line in-process (Typer's runner): happy paths, exit codes and one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adapmtl_cli.report.terminal import report_markdown
from adapmtl_cli.report.views import load_runs
from adapmtl_cli.train.events import StepInfo

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import (  # noqa: E402
    COMPONENTS,
    FACTORY,
    INTERRUPT_AT,
    TASKS,
    CliRun,
    copy_run,
    invoke,
    read_metrics,
    read_report,
    snapshot_files,
    time_limit,
    user_error,
)

pytest_plugins = ["fixtures_e2e"]

QUICK = ("--steps", "3", "--batch-size", "4", "--device", "cpu", "-q")


def _prune(checkpoint: Path, scenes: Path, out: Path, *extra: object) -> list[object]:
    return ["prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *QUICK, *extra]


# --- happy paths -------------------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("adapmtl ")


def test_data_synth_writes_the_mtan_layout(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    result = invoke("data", "synth", root, "--train", 3, "--val", 2, "--size", "24,32", "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "wrote 3 train + 2 val scenes of 24x32" in result.stdout
    for split, count in (("train", 3), ("val", 2)):
        for folder in ("image", "label", "depth", "normal"):
            files = sorted(p.name for p in (root / split / folder).glob("*.npy"))
            assert files == [f"{i}.npy" for i in range(count)], (split, folder)
    assert np.load(root / "train" / "image" / "0.npy").shape == (24, 32, 3)
    assert np.load(root / "val" / "normal" / "1.npy").shape == (24, 32, 3)


def test_data_synth_rejects_a_tiny_size(tmp_path: Path) -> None:
    message = user_error(invoke("data", "synth", tmp_path / "s", "--size", "8,8"))
    assert "--size '8,8'" in message


def test_inspect_json_lists_components_outputs_and_unreached(checkpoint: Path, scenes: Path) -> None:
    result = invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert sorted(c["name"] for c in manifest["components"]) == sorted(COMPONENTS)
    kinds = {c["name"]: c["kind"] for c in manifest["components"]}
    assert kinds["backbone"] == "backbone" and kinds["head:depth"] == "head"
    assert sorted(manifest["outputs"]) == sorted(TASKS)
    assert manifest["tasks"] == list(TASKS)
    assert isinstance(manifest["unreached"], list)
    assert manifest["prunable_params"] == sum(c["prunable_params"] for c in manifest["components"]) > 0
    assert manifest["input_shape"] == [3, 32, 48]


def test_inspect_table_names_every_component(checkpoint: Path, scenes: Path) -> None:
    result = invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes)
    assert result.exit_code == 0, result.output
    for name in COMPONENTS:
        assert name in result.stdout
    assert "prunable layers" in result.stdout
    assert result.stderr == ""


def test_prune_exits_0_and_writes_the_run_folder(pruned_run: CliRun) -> None:
    result = pruned_run.result
    assert result.exit_code == 0, result.output
    for name in ("config.json", "components.json", "metrics.jsonl", "report.json", "pruned.safetensors"):
        assert (pruned_run.path / name).is_file(), name
    assert (pruned_run.path / "state" / "latest.pt").is_file()
    assert f"run written to {pruned_run.path}" in result.stdout
    assert result.stderr == ""
    assert "achieved 90.00%" in result.stdout  # the report table, shown because -q was not passed
    assert [r["step"] for r in read_metrics(pruned_run.path)] == [5, 10, 15, 20, 25, 30]


def test_prune_saves_the_resolved_config(pruned_run: CliRun, checkpoint: Path) -> None:
    cfg = json.loads((pruned_run.path / "config.json").read_text())
    assert cfg["checkpoint"] == str(checkpoint)
    assert cfg["factory"] == FACTORY
    picked = {k: cfg[k] for k in ("sparsity", "steps", "batch_size", "log_every", "save_every")}
    assert picked == {"sparsity": 0.9, "steps": 30, "batch_size": 4, "log_every": 5, "save_every": 10}


def test_inspect_json_equals_the_runs_components_file(pruned_run: CliRun, checkpoint: Path, scenes: Path) -> None:
    result = invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--json")
    assert json.loads(result.stdout) == json.loads((pruned_run.path / "components.json").read_text())


def test_report_table(pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path)
    assert result.exit_code == 0, result.output
    rep = read_report(pruned_run.path)
    assert f"achieved {rep.overall_sparsity:.2%}" in result.stdout
    for name in COMPONENTS:
        assert name in result.stdout
    assert "Δ_T" in result.stdout
    assert rep.layers[0].name not in result.stdout  # the layer table is opt-in
    assert rep.layer_scale == "saliency" and "layer scale saliency" in result.stdout


def test_report_shows_each_layers_own_threshold(pruned_run: CliRun) -> None:
    """With layer scales, a layer's threshold is its component's times its scale: they differ within a component."""
    rep = read_report(pruned_run.path)
    for comp in rep.components:
        own = {layer.threshold for layer in rep.layers if layer.component == comp.name}
        assert len(own) > 1, comp.name
        # each layer prunes exactly what its own threshold says (the counts the report prints are the forward's)
        assert all(t is not None and t > 0 for t in own)


def test_layer_scale_none_is_the_papers_raw_thresholds(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(*_prune(checkpoint, scenes, out, "--layer-scale", "none"), "-q")
    assert result.exit_code == 0, result.output
    rep = read_report(out)
    assert rep.layer_scale == "none" and abs(rep.overall_sparsity - 0.9) <= 0.001
    by_comp = {c.name: c.threshold for c in rep.components}
    assert all(layer.threshold == pytest.approx(by_comp[layer.component], rel=1e-6) for layer in rep.layers)


def test_report_json_equals_report_file(pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((pruned_run.path / "report.json").read_text())


def test_report_markdown(pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path, "--markdown")
    assert result.exit_code == 0, result.output
    [view] = load_runs([pruned_run.path])
    # the shared run may have been exported (with latency) by an earlier test: the view carries what the CLI shows
    want = report_markdown(view.report, baseline=view.baseline, latency=view.latency)
    assert result.stdout.rstrip("\n") == want.rstrip("\n")
    assert "| component | kind | tasks | params | sparsity | threshold |" in result.stdout


def test_report_layers_lists_every_layer(pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path, "--layers")
    assert result.exit_code == 0, result.output
    rep = read_report(pruned_run.path)
    assert len(rep.layers) > 4
    for layer in rep.layers:
        assert layer.name in result.stdout


@pytest.mark.onnx
def test_export_onnx_prints_parity_and_writes_files(exported_run: CliRun) -> None:
    result = exported_run.result
    assert result.exit_code == 0, result.output
    assert "onnxruntime parity max abs diff" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "parity max abs diff" in x)
    diff = float(line.split("max abs diff")[1].split()[0])
    assert diff <= 1e-4
    assert "decodes bit-exactly" in result.stdout
    assert result.stderr == ""  # the exporters' chatter is silenced
    for name in ("model.safetensors", "model.sparse.safetensors", "model.onnx", "manifest.json"):
        assert (exported_run.path / name).is_file(), name


def test_export_to_another_folder_without_onnx(pruned_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    result = invoke("export", pruned_run.path, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors", "model.sparse.safetensors"]
    assert "onnx" not in result.stdout


# --- user errors: exit 2, one line ``Error: ...``, no traceback --------------------------------------


def test_missing_checkpoint(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    message = user_error(invoke(*_prune(tmp_path / "nope.pt", scenes, tmp_path / "run")))
    assert "does not exist" in message and "nope.pt" in message


def test_checkpoint_of_random_bytes(scenes: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    message = user_error(invoke(*_prune(junk, scenes, tmp_path / "run")))
    assert "junk.pt" in message and "not a PyTorch checkpoint" in message


def test_state_dict_without_factory(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    args = ["prune", checkpoint, "--data-dir", scenes, "--out", tmp_path / "run", *QUICK]
    message = user_error(invoke(*args))
    assert "state_dict" in message and "--factory" in message


def test_state_dict_that_does_not_fit_the_factory(
    checkpoint: Path, scenes: Path, factory_file: Path, tmp_path: Path
) -> None:
    args = ["inspect", checkpoint, "--factory", f"{factory_file}:five", "--data-dir", scenes]
    message = user_error(invoke(*args))
    assert "does not fit the model" in message and "--factory" in message


@pytest.mark.parametrize("spec", ["no_colon_here", "adapmtl_cli.models:", ":deeplab_resnet_tiny"])
def test_malformed_factory_spec(checkpoint: Path, scenes: Path, spec: str) -> None:
    message = user_error(invoke("inspect", checkpoint, "--factory", spec, "--data-dir", scenes))
    assert f"--factory {spec!r}" in message


def test_factory_module_that_does_not_exist(checkpoint: Path, scenes: Path) -> None:
    message = user_error(invoke("inspect", checkpoint, "--factory", "no_such_pkg_xyz:build", "--data-dir", scenes))
    assert "no_such_pkg_xyz" in message


def test_pickled_module_without_trust_pickle(scenes: Path, tmp_path: Path) -> None:
    from adapmtl_cli.models import deeplab_resnet_tiny

    whole = tmp_path / "whole.pt"
    torch.save(deeplab_resnet_tiny(), whole)
    message = user_error(invoke("prune", whole, "--data-dir", scenes, "--out", tmp_path / "run", *QUICK))
    assert "--trust-pickle" in message and "would import" in message and "torch.nn.modules" in message


def test_pickled_module_with_trust_pickle_is_inspected(scenes: Path, tmp_path: Path) -> None:
    from adapmtl_cli.models import deeplab_resnet_tiny

    whole = tmp_path / "whole.pt"
    torch.save(deeplab_resnet_tiny(), whole)
    result = invoke("inspect", whole, "--trust-pickle", "--data-dir", scenes, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(c["name"] for c in json.loads(result.stdout)["components"]) == sorted(COMPONENTS)


def test_data_dir_missing(checkpoint: Path, tmp_path: Path) -> None:
    message = user_error(invoke(*_prune(checkpoint, tmp_path / "no_data", tmp_path / "run")))
    assert "no_data" in message and "does not exist" in message


def test_data_dir_with_wrong_layout(checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images" / "0.png").write_bytes(b"x")
    message = user_error(invoke(*_prune(checkpoint, bad, tmp_path / "run")))
    assert "bad" in message and "train/" in message


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-1"])
def test_sparsity_outside_the_open_unit_interval(checkpoint: Path, scenes: Path, tmp_path: Path, value: str) -> None:
    out = tmp_path / "run"
    message = user_error(invoke(*_prune(checkpoint, scenes, out, "--sparsity", value)))
    assert message.startswith("--sparsity")
    assert not out.exists()  # validated before anything is written


def test_outputs_naming_an_unknown_task(checkpoint: Path, scenes: Path) -> None:
    args = ["inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--outputs", "seg,depth,bogus"]
    message = user_error(invoke(*args))
    assert "'bogus'" in message and "--outputs" in message


def test_tasks_naming_an_unknown_task(checkpoint: Path, scenes: Path) -> None:
    message = user_error(invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--tasks", "x"))
    assert "--tasks" in message and "'x'" in message


def test_outputs_that_match_no_task_tuple(scenes: Path, factory_file: Path, tmp_path: Path) -> None:
    """A model returning ``(five_channel_map,)``: no task has 5 channels."""
    ckpt = tmp_path / "five.pt"
    torch.save({"conv." + k: v for k, v in torch.nn.Conv2d(3, 5, 3, padding=1).state_dict().items()}, ckpt)
    message = user_error(invoke("inspect", ckpt, "--factory", f"{factory_file}:five_tuple", "--data-dir", scenes))
    assert "cannot tell which output" in message and "--outputs" in message


def test_outputs_that_match_no_task_bare_tensor(scenes: Path, factory_file: Path, tmp_path: Path) -> None:
    """A model whose forward returns a single bare (B, 5, H, W) tensor (once crashed with IndexError, exit 1)."""
    ckpt = tmp_path / "five.pt"
    torch.save({"conv." + k: v for k, v in torch.nn.Conv2d(3, 5, 3, padding=1).state_dict().items()}, ckpt)
    out = tmp_path / "run"
    args = ["prune", ckpt, "--factory", f"{factory_file}:five", "--data-dir", scenes, "--out", out, *QUICK]
    message = user_error(invoke(*args))
    assert "cannot tell which output" in message and "(2, 5, 32, 48)" in message and "--outputs" in message
    assert not (out / "report.json").exists()


def test_inspect_with_a_task_subset(checkpoint: Path, scenes: Path) -> None:
    args = ["inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--tasks", "seg,depth", "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["tasks"] == ["segmentation", "depth"]
    assert sorted(c["name"] for c in manifest["components"]) == ["backbone", "head:depth", "head:segmentation"]
    assert manifest["unreached"] and all(m.startswith("heads.normal.") for m in manifest["unreached"])


def test_inspect_exclude_protects_layers(checkpoint: Path, scenes: Path) -> None:
    args = ["inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--json"]
    full = json.loads(invoke(*args).stdout)
    result = invoke(*args, "--exclude", "backbone.stem*")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["excluded"] == ["backbone.stem.0"]
    assert "backbone.stem.0" not in [layer["name"] for layer in manifest["layers"]]
    assert manifest["prunable_params"] == full["prunable_params"] - 216  # 3x3 conv, 3 -> 8 channels


@pytest.mark.parametrize(
    ("head", "expected"), [("nonsense", "must look like TASK=GLOB"), ("bogus=heads.*", "names task 'bogus'")]
)
def test_inspect_bad_head_override(checkpoint: Path, scenes: Path, head: str, expected: str) -> None:
    message = user_error(invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--head", head))
    assert message.startswith("--head") and expected in message


def test_unknown_dataset_adapter(checkpoint: Path, scenes: Path) -> None:
    message = user_error(invoke("inspect", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--data", "nyu"))
    assert "'nyu'" in message and "nyuv2" in message and "synthetic" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    args = ["prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", tmp_path / "run"]
    message = user_error(invoke(*args, "--steps", "2", "--batch-size", "4", "--device", "cuda", "-q"))
    assert "--device" in message and "'cuda'" in message


def test_batch_size_larger_than_the_train_split(
    checkpoint: Path, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 training samples, --batch-size 32: finish (e.g. clamp the batch) or refuse with exit 2; never hang."""
    from adapmtl_cli.cli import ui

    stack = contextlib.ExitStack()
    original = ui.status

    def status(message: str) -> None:  # the limit starts with the loop, so the dense evaluation does not count
        original(message)
        if message.startswith("fine-tuning"):
            stack.enter_context(time_limit(10))

    monkeypatch.setattr(ui, "status", status)
    args = ["prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", tmp_path / "run"]
    with stack:
        result = invoke(*args, "--steps", "2", "--batch-size", "32", "--eval-batches", "1", "--device", "cpu", "-q")
    assert not isinstance(result.exception, TimeoutError), "prune hung"
    if result.exit_code != 0:
        assert "batch" in user_error(result)


def test_prune_into_an_existing_run_is_refused_and_touches_nothing(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    before = snapshot_files(run)
    message = user_error(invoke(*_prune(Path(cfg["checkpoint"]), Path(cfg["data_dir"]), run)))
    assert "already holds files" in message and "--resume" in message and "--overwrite" in message
    after = snapshot_files(run)
    assert after["report.json"] == before["report.json"]
    assert after == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    message = user_error(invoke(*_prune(checkpoint, scenes, out, "--overwrite")))
    assert "not an adapmtl run folder" in message
    assert (out / "notes.txt").read_text() == "keep me"


def test_report_on_a_folder_that_is_not_a_run(scenes: Path, tmp_path: Path) -> None:
    assert "report.json" in user_error(invoke("report", scenes))
    assert "does not exist" in user_error(invoke("report", tmp_path / "nothing"))


def test_report_and_export_on_a_run_without_weights(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "unfinished")
    (run / "pruned.safetensors").unlink()
    (run / "report.json").unlink()
    message = user_error(invoke("export", run))
    assert "no pruned weights" in message and "resume" in message  # the hint names how to finish the run
    assert not (run / "export").exists()
    message = user_error(invoke("report", run))
    assert "has not finished" in message and "resume" in message


def test_resume_with_no_run(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    message = user_error(invoke(*_prune(checkpoint, scenes, tmp_path / "empty", "--resume")))
    assert message.startswith("--resume") and "no run to resume" in message


def test_unknown_exporter(pruned_run: CliRun) -> None:
    message = user_error(invoke("export", pruned_run.path, "--exporter", "foo"))
    assert "--exporter 'foo'" in message and "dynamo" in message and "legacy" in message


def test_debug_shows_the_traceback(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    result = invoke("--debug", *_prune(tmp_path / "nope.pt", scenes, tmp_path / "run"))
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "CheckpointError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: checkpoint")
    # --debug is per invocation: the next command is back to one line
    assert "Traceback" not in invoke(*_prune(tmp_path / "nope.pt", scenes, tmp_path / "run2")).output


# --- non-finite losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "expected"),
    [("nan_from_start", "non-finite loss"), ("nan_after_three", "became nan at step 3")],
)
def test_non_finite_loss(scenes: Path, factory_file: Path, tmp_path: Path, factory: str, expected: str) -> None:
    from adapmtl_cli.models import deeplab_resnet_tiny

    ckpt = tmp_path / "m.pt"
    torch.save({"inner." + k: v for k, v in deeplab_resnet_tiny().state_dict().items()}, ckpt)
    out = tmp_path / "run"
    args = ["prune", ckpt, "--factory", f"{factory_file}:{factory}", "--data-dir", scenes, "--out", out]
    message = user_error(invoke(*args, "--steps", "6", "--batch-size", "4", "--device", "cpu", "-q"))
    assert expected in message
    if factory == "nan_from_start":
        # Caught by the probe before training: nothing is written, so the corrected command is not refused.
        assert not out.exists()
    else:
        assert (out / "config.json").is_file()
        assert not (out / "report.json").exists()


def test_failed_start_leaves_no_run_behind(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert user_error(invoke(*_prune(tmp_path / "nope.pt", scenes, out)))
    assert not out.exists()
    # the corrected command then runs without --overwrite
    result = invoke(*_prune(checkpoint, scenes, out), "--steps", "2", "--batch-size", "4", "-q")
    assert result.exit_code == 0, result.output


# --- interruption and resume ------------------------------------------------------------------------


def test_resume_via_cli_after_an_interruption(interrupted_run: Path, uninterrupted_run: Path, tmp_path: Path) -> None:
    run = copy_run(interrupted_run, tmp_path / "run")
    assert not (run / "report.json").exists()
    cfg = json.loads((run / "config.json").read_text())
    args = ["prune", cfg["checkpoint"], "--factory", FACTORY, "--data-dir", cfg["data_dir"], "--out", run]
    result = invoke(*args, "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert read_report(run).overall_sparsity == read_report(uninterrupted_run).overall_sparsity
    got, want = load_file(str(run / "pruned.safetensors")), load_file(str(uninterrupted_run / "pruned.safetensors"))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_ctrl_c_saves_state_and_exits_130(
    checkpoint: Path, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT mid-run: the engine finishes the step, saves it, and the CLI exits 130."""
    from adapmtl_cli.cli import ui

    original = ui.TrainingProgress.on_step

    def on_step(self: ui.TrainingProgress, info: StepInfo) -> None:
        original(self, info)
        if info.step == 4:
            # Never let the SIGINT reach pytest itself: the loop must have its own handler installed.
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, "no deferred-stop handler"
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # let the interpreter run the handler before the loop goes on

    monkeypatch.setattr(ui.TrainingProgress, "on_step", on_step)
    out = tmp_path / "run"
    result = invoke(*_prune(checkpoint, scenes, out, "--steps", "8", "--save-every", "100"))
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().startswith("Error: interrupted")
    state = torch.load(out / "state" / "latest.pt", weights_only=True)
    # The stop request is read at the next step's synchronisation (where, under torchrun, every rank agrees on
    # it), so the step in progress when Ctrl-C came (5) is finished and saved, and nothing after it runs.
    assert state["step"] == 5
    assert not (out / "report.json").exists()


def test_interrupted_fixture_stopped_between_saves(interrupted_run: Path) -> None:
    state = torch.load(interrupted_run / "state" / "latest.pt", weights_only=True)
    assert state["step"] == 12 < INTERRUPT_AT


# --- demo ----------------------------------------------------------------------------------------------


def test_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    message = user_error(invoke("demo", "--out", tmp_path, "--steps", "2", "--dense-steps", "1", "-q"))
    assert "--overwrite" in message
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "scenes").exists()


@pytest.mark.onnx
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    start = time.perf_counter()
    result = invoke("demo", "--out", out, "--steps", "20", "--dense-steps", "10", "-q")
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    # ~10 s on 2 idle CPU cores; mark it slow if it ever passes 60 s
    print(f"demo took {seconds:.1f} s")
    rep = read_report(out / "run")
    assert abs(rep.overall_sparsity - 0.9) <= 0.005
    assert "demo finished" in result.stdout
    for name in ("model.safetensors", "model.sparse.safetensors", "model.onnx"):
        assert (out / "run" / "export" / name).is_file()
    before = snapshot_files(out / "run")
    message = user_error(invoke("demo", "--out", out, "--steps", "20", "--dense-steps", "10", "-q"))
    assert "already holds files" in message and "--overwrite" in message
    assert snapshot_files(out / "run") == before


# --- --component-sparsity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--component-sparsity", "backbone"], "must look like NAME=MIN:MAX"),
        (["--component-sparsity", "backbone=a:b"], "must look like NAME=MIN:MAX"),
        (["--component-sparsity", "neck=0:0.5"], "not a component"),
        (["--component-sparsity", "backbone=0:0.1", "--component-sparsity", "head:depth=0:0.1"], "allow an overall"),
        (["--component-sparsity", "backbone=0:0.95", "--method", "gmp"], "--method gmp has none"),
        (["--component-sparsity", "backbone=0:0.95", "--method", "str_layer"], "--method str_layer has none"),
        (["--layer-scale", "saliency", "--method", "disparse"], "--method disparse prunes with masks"),
        (["--layer-scale", "size"], "--layer-scale: Input should be 'saliency' or 'none'"),
        (["--settle", "freeze"], "--settle: Input should be 'mask' or 'thresholds'"),
        (["--settle", "mask", "--method", "gmp"], "--method gmp prunes with masks"),
        (["--settle", "mask", "--structure", "channel"], "does not apply to --structure channel"),
    ],
)
def test_component_sparsity_errors(
    checkpoint: Path, scenes: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    text = user_error(invoke(*_prune(checkpoint, scenes, out, *extra)))
    assert message in text
    assert not out.exists()  # a refused start leaves no run folder


def test_component_sparsity_round_trips_through_the_config(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    result = invoke(
        *_prune(checkpoint, scenes, tmp_path / "run", "--component-sparsity", "head:depth=:0.97"), "--print-config"
    )
    assert result.exit_code == 0, result.output
    toml = tmp_path / "c.toml"
    toml.write_text(result.stdout)
    again = invoke("prune", "--config", toml, "--print-config")
    assert again.exit_code == 0 and again.stdout == result.stdout
    assert "[component_sparsity]" in result.stdout and '"head:depth" = [0.0, 0.97]' in result.stdout
