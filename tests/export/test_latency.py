"""onnxruntime latency: interleaved timing, session settings, the dense reference, the manifest entry and the CLI."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from export_samples import TASKS, images, pruned_model
from torch import Tensor, nn

from adapmtl_cli.config import (
    LATENCY_BATCH,
    LATENCY_REPEATS,
    LATENCY_THREADS,
    ExportManifest,
    LatencyAtBatch,
    LatencyManifest,
)
from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.latency import Latency, measure_latency, session_options
from adapmtl_cli.export.onnx import export_onnx
from adapmtl_cli.files.atomic import read_model, write_model
from adapmtl_cli.jobs import export as export_job
from adapmtl_cli.jobs import export_latency
from adapmtl_cli.jobs.export import export_run
from adapmtl_cli.jobs.export_latency import parse_input_shape
from adapmtl_cli.report.views import latency_lines

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import CliRun, copy_run, invoke, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

SHAPE = [3, 32, 48]  # export_samples.images: one sample without the batch dimension


class _TupleOutputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(x)
        return tuple(outputs[name] for name in TASKS)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The tiny pruned model and its dense twin, exported (legacy exporter: fastest) with a dynamic batch."""
    folder = tmp_path_factory.mktemp("latency")
    paths = []
    for name, seed in (("a.onnx", 0), ("b.onnx", 1)):
        paths.append(
            export_onnx(_TupleOutputs(pruned_model(seed)), images(1), folder / name, TASKS, exporter="legacy").path
        )
    return paths


# --- measure_latency ------------------------------------------------------------------------------


@pytest.mark.onnx
def test_medians_are_positive_for_each_file_at_batch_1_and_batch(two_files: list[Path]) -> None:
    lat = measure_latency(two_files, SHAPE, batch=3, repeats=3, warmup=1)
    assert isinstance(lat, Latency)
    assert lat.batches == (1, 3) and lat.threads == 1 and lat.repeats == 3 and lat.warmup == 1
    assert list(lat.medians_ms) == ["a.onnx", "b.onnx"]
    for by_batch in lat.medians_ms.values():
        assert list(by_batch) == [1, 3] and all(ms > 0 for ms in by_batch.values())
    assert lat.at(3) == {name: by_batch[3] for name, by_batch in lat.medians_ms.items()}
    assert lat.onnxruntime and lat.onnxruntime[0].isdigit()


@pytest.mark.onnx
def test_batch_1_is_timed_once_and_labels_come_from_a_mapping(two_files: list[Path]) -> None:
    lat = measure_latency({"dense": two_files[0], "pruned": two_files[1]}, SHAPE, batch=1, repeats=2, warmup=0)
    assert lat.batches == (1,) and list(lat.medians_ms) == ["dense", "pruned"]


class _FakeSession:
    """Stands in for ``onnxruntime.InferenceSession``: records the options and every run, in order."""

    log: list[tuple[str, int]] = []
    options: list[Any] = []

    def __init__(self, path: str, options: Any, providers: list[str]) -> None:
        self.name = Path(path).name
        assert providers == ["CPUExecutionProvider"]
        _FakeSession.options.append(options)

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="image", type="tensor(float)")]

    def run(self, outputs: object, feed: dict[str, Any]) -> list[object]:
        _FakeSession.log.append((self.name, int(feed["image"].shape[0])))
        assert list(feed["image"].shape[1:]) == SHAPE and str(feed["image"].dtype) == "float32"
        return []


@pytest.fixture
def fake_sessions(monkeypatch: pytest.MonkeyPatch) -> type[_FakeSession]:
    import onnxruntime

    _FakeSession.log, _FakeSession.options = [], []
    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeSession)
    return _FakeSession


def test_files_are_timed_round_robin_after_a_warm_up(fake_sessions: type[_FakeSession]) -> None:
    names = ["x.onnx", "y.onnx", "z.onnx"]
    ticks = itertools.count(step=0.002)  # every timed run takes exactly 2 ms on this clock
    lat = measure_latency([Path(n) for n in names], SHAPE, batch=4, repeats=5, warmup=2, clock=lambda: next(ticks))
    want = [(n, b) for b in (1, 4) for _ in range(2 + 5) for n in names]  # warm-up, then timed, each round-robin
    assert fake_sessions.log == want
    assert lat.medians_ms == {n: {1: pytest.approx(2.0), 4: pytest.approx(2.0)} for n in names}


def test_the_thread_count_reaches_every_session(fake_sessions: type[_FakeSession]) -> None:
    import onnxruntime

    measure_latency([Path("x.onnx"), Path("y.onnx")], SHAPE, batch=2, threads=3, repeats=1, warmup=0)
    assert len(fake_sessions.options) == 2
    for options in fake_sessions.options:
        assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
        assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert session_options(2).intra_op_num_threads == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": 0}, "latency batch must be a positive integer, got 0"),
        ({"threads": -1}, "latency threads must be a positive integer, got -1"),
        ({"repeats": 0}, "latency repeats must be a positive integer, got 0"),
        ({"warmup": -1}, "latency warmup must be a whole number, got -1"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        measure_latency([Path("x.onnx")], SHAPE, **kwargs)


def test_duplicate_file_names_and_no_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="two ONNX files are named 'model.onnx'"):
        measure_latency([tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"], SHAPE)
    with pytest.raises(ExportError, match="no ONNX files to time"):
        measure_latency([], SHAPE)


def test_an_unloadable_file_is_one_export_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match=r"onnxruntime cannot load .*bad\.onnx"):
        measure_latency([tmp_path / "bad.onnx"], SHAPE, repeats=1)


def test_defaults_are_the_documented_constants() -> None:
    assert (LATENCY_BATCH, LATENCY_THREADS, LATENCY_REPEATS) == (8, 1, 20)
    assert export_job.LatencyRequest() == export_job.LatencyRequest(batch=8, threads=1, repeats=20)


# --- the manifest entry ---------------------------------------------------------------------------

_BASE = {
    "dense": "model.safetensors",
    "dense_bytes": 10,
    "sparse": "model.sparse.safetensors",
    "sparse_bytes": 4,
    "sparse_roundtrip": "bit-exact",
}
_LATENCY = LatencyManifest(
    batch=8,
    threads=1,
    repeats=20,
    warmup=3,
    onnxruntime="1.0",
    dense_ms=3.18,
    files={"model.onnx": 3.21, "model.shrunk.onnx": 2.5},
    batch1=LatencyAtBatch(dense_ms=0.5, files={"model.onnx": 0.52, "model.shrunk.onnx": 0.4}),
)


def test_manifest_round_trips_with_and_without_latency(tmp_path: Path) -> None:
    for manifest in (ExportManifest(**_BASE), ExportManifest(**_BASE, latency=_LATENCY)):
        write_model(tmp_path / "manifest.json", manifest)
        assert read_model(tmp_path / "manifest.json", ExportManifest) == manifest
    saved = json.loads((tmp_path / "manifest.json").read_text())["latency"]
    assert {k: saved[k] for k in ("batch", "threads", "dense_ms", "files")} == {
        "batch": 8,
        "threads": 1,
        "dense_ms": 3.18,
        "files": {"model.onnx": 3.21, "model.shrunk.onnx": 2.5},
    }
    assert saved["batch1"]["dense_ms"] == 0.5 and saved["batch1"]["files"]["model.onnx"] == 0.52


def test_a_manifest_written_before_latency_still_reads() -> None:
    old = json.dumps({**_BASE, "schema_version": 1})
    assert ExportManifest.model_validate_json(old).latency is None


def test_latency_lines_name_each_file_at_both_batch_sizes() -> None:
    assert latency_lines(_LATENCY) == [
        "latency model.onnx: 3.21 ms vs dense 3.18 ms (1.01× dense; batch 8, 1 thread, median of 20)",
        "latency model.shrunk.onnx: 2.50 ms vs dense 3.18 ms (0.79× dense; batch 8, 1 thread, median of 20)",
        "latency model.onnx: 0.52 ms vs dense 0.50 ms (1.04× dense; batch 1, 1 thread, median of 20)",
        "latency model.shrunk.onnx: 0.40 ms vs dense 0.50 ms (0.80× dense; batch 1, 1 thread, median of 20)",
    ]
    one = _LATENCY.model_copy(update={"batch": 1, "threads": 4})
    assert (
        latency_lines(one)[0].endswith("(1.01× dense; batch 1, 4 threads, median of 20)")
        and len(latency_lines(one)) == 2
    )


# --- export_run: the dense reference --------------------------------------------------------------


@pytest.mark.onnx
def test_export_times_model_onnx_against_a_temporary_dense_file(
    pruned_run: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Path]] = []

    def recording(paths: dict[str, Path], *args: Any, **kwargs: Any) -> Latency:
        seen.append(dict(paths))
        assert paths["dense"].is_file()  # exists while it is timed
        return measure_latency(paths, *args, **kwargs)

    monkeypatch.setattr(export_latency, "measure_latency", recording)
    out = tmp_path / "out"
    phases: list[str] = []

    def phase(message: str) -> contextlib.AbstractContextManager[None]:
        phases.append(message)
        return contextlib.nullcontext()

    manifest = export_run(
        pruned_run.path,
        out_dir=out,
        onnx=True,
        exporter="legacy",
        latency=True,
        latency_batch=2,
        latency_repeats=2,
        phase=phase,
    )
    [paths] = seen
    assert list(paths) == ["dense", "model.onnx"] and paths["model.onnx"] == out / "model.onnx"
    assert not paths["dense"].exists() and not paths["dense"].parent.exists()  # removed afterwards
    assert out not in paths["dense"].parents
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.safetensors",
        "model.sparse.safetensors",
    ]
    lat = manifest.latency
    assert lat is not None and (lat.batch, lat.threads, lat.repeats) == (2, 1, 2)
    assert list(lat.files) == ["model.onnx"] and list(lat.batch1.files) == ["model.onnx"]
    assert lat.dense_ms > 0 and lat.batch1.dense_ms > 0 and all(v > 0 for v in lat.files.values())
    assert read_model(out / "manifest.json", ExportManifest) == manifest
    assert phases[0] == "exporting" and phases[1].startswith("timing onnxruntime latency") and len(phases) == 2


def _spatial(path: Path) -> list[int]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[2:]]


@pytest.mark.onnx
def test_latency_input_re_exports_every_model_at_that_shape_for_the_timing_only(
    pruned_run: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[dict[str, list[int]], list[int]]] = []

    def recording(paths: dict[str, Path], shape: Any, *args: Any, **kwargs: Any) -> Latency:
        seen.append(({label: _spatial(path) for label, path in paths.items()}, list(shape)))
        return measure_latency(paths, shape, *args, **kwargs)

    monkeypatch.setattr(export_latency, "measure_latency", recording)
    out = tmp_path / "out"
    manifest = export_run(
        pruned_run.path,
        out_dir=out,
        onnx=True,
        exporter="legacy",
        latency=True,
        latency_batch=2,
        latency_repeats=2,
        latency_input=(3, 64, 96),
    )
    [(spatial, shape)] = seen
    assert shape == [3, 64, 96] and spatial == {"dense": [64, 96], "model.onnx": [64, 96]}
    assert _spatial(out / "model.onnx") == SHAPE[1:]  # the shipped file keeps the run's shape
    lat = manifest.latency
    assert lat is not None and lat.input_shape == [3, 64, 96] and list(lat.files) == ["model.onnx"]
    assert all("input 3x64x96" in line for line in latency_lines(lat))
    assert read_model(out / "manifest.json", ExportManifest) == manifest
    same = export_run(
        pruned_run.path,
        out_dir=tmp_path / "same",
        onnx=True,
        exporter="legacy",
        latency=True,
        latency_repeats=2,
        latency_input=tuple(SHAPE),
    )
    assert same.latency is not None and same.latency.input_shape is None  # the run's own shape: files as written
    assert seen[-1][0]["model.onnx"] == SHAPE[1:]


def test_input_shapes_parse_from_x_or_commas() -> None:
    assert parse_input_shape("3x288x384") == (3, 288, 384) == parse_input_shape("3,288,384")
    for bad in ("3x", "3x0x4", "a,b", "3x-2x4", ""):
        with pytest.raises(ValueError, match="is not an input shape like 3x288x384"):
            parse_input_shape(bad)


def test_export_without_onnx_measures_nothing(pruned_run: CliRun, tmp_path: Path) -> None:
    manifest = export_run(pruned_run.path, out_dir=tmp_path / "out", latency=True)
    assert manifest.onnx is None and manifest.latency is None


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.mark.onnx
def test_cli_export_prints_latency_per_file_at_both_batch_sizes(exported_run: CliRun) -> None:
    result = exported_run.result
    assert result.exit_code == 0, result.output
    manifest = read_model(exported_run.path / "manifest.json", ExportManifest)
    lat = manifest.latency
    assert lat is not None
    assert (lat.batch, lat.threads, lat.repeats) == (LATENCY_BATCH, LATENCY_THREADS, LATENCY_REPEATS)
    assert list(lat.files) == ["model.onnx"]
    lines = [line for line in result.stdout.splitlines() if line.startswith("• latency ")]
    assert lines == [f"• {line}" for line in latency_lines(lat)] and len(lines) == 2
    assert "batch 8, 1 thread, median of 20" in lines[0] and "batch 1, 1 thread" in lines[1]
    assert not list(exported_run.path.glob("*dense*"))  # the reference never lands in the export folder


@pytest.mark.onnx
def test_cli_no_latency_leaves_it_out(pruned_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("export", pruned_run.path, "--onnx", "--exporter", "legacy", "--no-latency", "--out", out)
    assert result.exit_code == 0, result.output
    assert read_model(out / "manifest.json", ExportManifest).latency is None
    assert "latency model.onnx" not in result.stdout and "timing" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--onnx", "--latency-batch", "0"), "--latency-batch 0 is not a positive integer"),
        (("--onnx", "--latency-threads", "-2"), "--latency-threads -2 is not a positive integer"),
        (("--latency-batch", "4"), "--latency-batch applies to the latency of ONNX files; add --onnx or --shrink"),
        (
            ("--onnx", "--no-latency", "--latency-threads", "2"),
            "--latency-threads applies to the latency measurement, which --no-latency turns off",
        ),
        (
            ("--onnx", "--latency-input", "3x"),
            "--latency-input '3x' is not an input shape like 3x288x384 (positive whole numbers, no batch)",
        ),
        (
            ("--onnx", "--latency-input", "1x64x96"),
            "--latency-input 1x64x96 does not fit this run's inputs (3x32x48): keep the channels (3) and give every "
            "spatial size",
        ),
        (
            ("--latency-input", "3x64x96"),
            "--latency-input applies to the latency of ONNX files; add --onnx or --shrink",
        ),
    ],
)
def test_bad_latency_options_are_refused_before_writing(
    pruned_run: CliRun, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    assert user_error(invoke("export", pruned_run.path, "--out", tmp_path / "out", *args)) == message
    assert not (tmp_path / "out").exists()


# --- the report -------------------------------------------------------------------------------------


@pytest.mark.onnx
def test_report_shows_the_exported_latency(exported_run: CliRun, pruned_run: CliRun) -> None:
    lat = read_model(exported_run.path / "manifest.json", ExportManifest).latency
    assert lat is not None
    for args in ((), ("--markdown",), ("--format", "html")):
        result = invoke("report", pruned_run.path, *args)
        assert result.exit_code == 0, result.output
        assert "ONNX latency" in result.stdout, args
        for line in latency_lines(lat):
            assert line in result.stdout, (args, line)


def test_report_of_a_run_without_export_has_no_latency(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")  # copies without export/
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert "ONNX latency" not in result.stdout and "latency model.onnx" not in result.stdout


def test_report_ignores_an_unreadable_export_manifest(pruned_run: CliRun, tmp_path: Path) -> None:
    run = copy_run(pruned_run.path, tmp_path / "run")
    (run / "export").mkdir()
    (run / "export" / "manifest.json").write_text("{not json", encoding="utf-8")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert "ONNX latency" not in result.stdout
