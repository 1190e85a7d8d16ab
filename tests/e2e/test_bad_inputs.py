"""The bad-input suite: dozens of broken checkpoints, models, data folders, options and output folders.

Every case runs the real CLI in-process and must end the same way: exit code 2, one ``Error: ...`` line on
stderr that names the problem, no traceback, and an earlier run folder left byte for byte as it was. Typer's
own syntax errors (a value that is not a number, an unknown option) add their usage line and a ``--help`` hint
above the ``Error:`` line; that is the documented exception to "one line".

Classes of bad input: checkpoints (empty, random bytes, truncated, not a checkpoint, a pickled module, a
pre-1.6 legacy pickle with or without a model in it, a pickle calling ``builtins.exec``, a zip with compressed
records, the state_dict of another model, NaN weights); models and factories (outputs that fit no task, a
factory returning no module, with a syntax error, calling ``sys.exit``); data folders; options; output folders
(unwritable, full, an earlier run); damaged run folders (``config.json``, ``components.json``, ``report.json``
not UTF-8 or of a newer ``schema_version``, a ``metrics.jsonl`` line that is not an object, a truncated
``pruned.safetensors``, a checkpoint replaced since the run started); crafted sparse files for
``export --densify`` (a tiny file declaring gigabytes, a table listing its own blob, slots of the wrong type,
nesting hundreds of thousands deep); a full disk during ``export``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, CliRun, copy_run, invoke, snapshot_files  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

BAD_MODELS = Path(__file__).parents[1] / "bad_models.py"
QUICK = ("--steps", "3", "--batch-size", "4", "--device", "cpu", "-q")


@dataclass
class Ctx:
    """What a case may build on: a scratch folder, the shared checkpoint and data, an earlier run."""

    tmp: Path
    checkpoint: Path
    scenes: Path
    earlier: Path

    @property
    def out(self) -> Path:
        return self.tmp / "new-run"

    def prune(self, checkpoint: Path | None = None, *extra: object, data: Path | None = None) -> list[object]:
        ckpt = self.checkpoint if checkpoint is None else checkpoint
        scenes = self.scenes if data is None else data
        return ["prune", ckpt, "--factory", FACTORY, "--data-dir", scenes, "--out", self.out, *QUICK, *extra]

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def model(self, factory: str, *extra: object) -> list[object]:
        """``prune`` with ``--factory tests/bad_models.py:FACTORY`` and a checkpoint that fits it."""
        import bad_models

        ckpt = self.tmp / f"{factory}.pt"
        torch.save(getattr(bad_models, factory)().state_dict(), ckpt)
        args = self.prune(ckpt, *extra)
        args[args.index("--factory") + 1] = f"{BAD_MODELS}:{factory}"
        return args

    def data(self, change: Callable[[Path], None], *extra: object) -> list[object]:
        """``prune`` on a copy of the shared scenes after ``change(copy)``."""
        root = self.tmp / "scenes"
        shutil.copytree(self.scenes, root)
        change(root)
        return self.prune(None, *extra, data=root)


@dataclass(frozen=True)
class Case:
    args: Callable[[Ctx], list[object]]
    expect: tuple[str, ...]
    usage: bool = False
    """A Typer syntax error: usage line and hint above the one ``Error:`` line."""
    leaves_nothing: bool = True
    """The failure comes before the run folder is written: ``--out`` must not exist afterwards."""
    file_size_limit: int | None = None


# --- case builders ----------------------------------------------------------------------------------------


def _truncated_zip(c: Ctx) -> list[object]:
    data = c.checkpoint.read_bytes()
    return c.prune(c.file("half.pt", data[: len(data) // 2]))


def _pickled_module(c: Ctx) -> list[object]:
    from adapmtl_cli.models import deeplab_resnet_tiny

    torch.save(deeplab_resnet_tiny(), c.tmp / "whole.pt")
    return c.prune(c.tmp / "whole.pt")


def _other_models_state_dict(c: Ctx) -> list[object]:
    from adapmtl_cli.models import mobilenet_v2_tiny

    torch.save(mobilenet_v2_tiny().state_dict(), c.tmp / "mobilenet.pt")
    return c.prune(c.tmp / "mobilenet.pt")


def _truncated_safetensors(c: Ctx) -> list[object]:
    state = torch.load(c.checkpoint, weights_only=True)
    save_file(state, str(c.tmp / "model.safetensors"))
    data = (c.tmp / "model.safetensors").read_bytes()
    return c.prune(c.file("cut.safetensors", data[: len(data) // 3]))


def _safetensors_without_factory(c: Ctx) -> list[object]:
    """A safetensors file under a ``.pt`` name is recognised by its content (it used to be "not a checkpoint")."""
    save_file(torch.load(c.checkpoint, weights_only=True), str(c.tmp / "weights.pt"))
    args = c.prune(c.tmp / "weights.pt")
    i = args.index("--factory")
    return args[:i] + args[i + 2 :]


def _dict_without_tensors(c: Ctx) -> list[object]:
    torch.save({"epoch": 3, "lr": 0.1}, c.tmp / "meta.pt")
    return c.prune(c.tmp / "meta.pt")


def _nan_weights(c: Ctx) -> list[object]:
    state = torch.load(c.checkpoint, weights_only=True)
    torch.save(
        {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}, c.tmp / "n.pt"
    )
    return c.prune(c.tmp / "n.pt")


def _factory_returning_an_int(c: Ctx) -> list[object]:
    args = c.prune()
    args[args.index("--factory") + 1] = f"{BAD_MODELS}:returns_an_int"
    return args


def _factory_with_syntax_error(c: Ctx) -> list[object]:
    (c.tmp / "broken.py").write_text("def build(:\n    pass\n")
    args = c.prune()
    args[args.index("--factory") + 1] = f"{c.tmp / 'broken.py'}:build"
    return args


def _npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.save(fh, array)


def _set(split: str, folder: str, index: int, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / split / folder / f"{index}.npy"
        _npy(path, change(np.load(path)))

    return apply


def _remove(*parts: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        target = root.joinpath(*parts)
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return apply


def _replace_bytes(rel: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / rel).write_bytes(make((root / rel).read_bytes()))

    return apply


def _object_array(root: Path) -> None:
    path = root / "train" / "depth" / "2.npy"
    with path.open("wb") as fh:
        np.save(fh, np.array([{"depth": 1.0}], dtype=object), allow_pickle=True)


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[7] = np.nan
    return a


def _out_under_a_file(c: Ctx) -> list[object]:
    args = c.prune()
    args[args.index("--out") + 1] = c.file("plain.txt", b"not a folder") / "run"
    return args


def _out_in_sysfs(c: Ctx) -> list[object]:
    args = c.prune()
    args[args.index("--out") + 1] = "/sys/adapmtl-test-run"
    return args


def _out_read_only(c: Ctx) -> list[object]:
    parent = c.tmp / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root ignores permissions: this case needs an unprivileged user
        parent.chmod(0o755)
        pytest.skip("running as root: chmod cannot make a folder read-only (see out_under_a_file, out_in_sysfs)")
    args = c.prune()
    args[args.index("--out") + 1] = parent / "run"
    return args


def _resume_with_corrupt_config(c: Ctx) -> list[object]:
    run = copy_run(c.earlier, c.tmp / "copied")
    (run / "config.json").write_text('{"checkpoint": "model.pt", "sparsity": "lots"')
    return ["resume", run, "-q"]


def _damaged_run(c: Ctx, name: str, change: Callable[[bytes], bytes]) -> Path:
    """A copy of the earlier run with ``name`` changed by ``change``."""
    run = copy_run(c.earlier, c.tmp / "damaged")
    (run / name).write_bytes(change((run / name).read_bytes()))
    return run


def _newer_schema(data: bytes) -> bytes:
    return data.replace(b'"schema_version": 1', b'"schema_version": 99')


def _line_not_an_object(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([lines[0], b"[1, 2]\n", *lines[1:]])


def _legacy_module(c: Ctx) -> list[object]:
    from adapmtl_cli.models import deeplab_resnet_tiny

    torch.save(deeplab_resnet_tiny(), c.tmp / "old.pt", _use_new_zipfile_serialization=False)
    return c.prune(c.tmp / "old.pt")


class _Exec:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("raise SystemExit('the pickle ran')",))


def _deflated_checkpoint(c: Ctx) -> list[object]:
    import zipfile

    with zipfile.ZipFile(c.checkpoint) as zin, zipfile.ZipFile(c.tmp / "z.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return c.prune(c.tmp / "z.pt")


def _factory_calling_sys_exit(c: Ctx) -> list[object]:
    (c.tmp / "quits.py").write_text("import sys\n\ndef build():\n    sys.exit(3)\n")
    args = c.prune()
    args[args.index("--factory") + 1] = f"{c.tmp / 'quits.py'}:build"
    return args


def _checkpoint_replaced(c: Ctx) -> list[object]:
    """The run's checkpoint was overwritten by another model's weights since the run started."""
    run = copy_run(c.earlier, c.tmp / "damaged")
    ckpt = c.tmp / "model.pt"
    shutil.copy(c.checkpoint, ckpt)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "checkpoint": str(ckpt)}))
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, ckpt)
    return ["resume", run, "-q"]


def _crafted_sparse(c: Ctx, table: object, blob: bytes = b"\x00\x00\x80?\x00\x00\x00\x00") -> list[object]:
    """``export --densify`` of a version-3 sparse file with this table (a JSON value or raw text)."""
    text = table if isinstance(table, str) else json.dumps(table)
    tensors = {"::sparse": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}
    save_file(
        tensors, str(c.tmp / "crafted.safetensors"), {"format": "adapmtl-sparse", "version": "3", "tensors": text}
    )
    return ["export", "--densify", c.tmp / "crafted.safetensors", c.out / "dense.safetensors"]


def _overwrite_foreign_folder(c: Ctx) -> list[object]:
    c.out.mkdir()
    (c.out / "thesis.tex").write_text("precious")
    return c.prune(None, "--overwrite")


CASES: dict[str, Case] = {
    # checkpoints
    "empty_checkpoint": Case(lambda c: c.prune(c.file("empty.pt", b"")), ("empty.pt", "is empty")),
    "random_bytes": Case(
        lambda c: c.prune(c.file("junk.pt", np.random.default_rng(0).bytes(4096))), ("not a PyTorch checkpoint",)
    ),
    "truncated_zip": Case(_truncated_zip, ("half.pt", "damaged or truncated")),
    "json_file": Case(lambda c: c.prune(c.file("model.json", b'{"weights": [1, 2]}')), ("not a PyTorch checkpoint",)),
    "checkpoint_is_a_folder": Case(lambda c: c.prune(c.tmp), ("is a folder",)),
    "missing_checkpoint": Case(lambda c: c.prune(c.tmp / "nope.pt"), ("nope.pt", "does not exist")),
    "pickled_module_untrusted": Case(_pickled_module, ("would import", "--trust-pickle")),
    "state_dict_of_another_model": Case(_other_models_state_dict, ("does not fit the model", "--factory")),
    "truncated_safetensors": Case(_truncated_safetensors, ("cut.safetensors", "not a valid safetensors file")),
    "safetensors_named_pt_without_factory": Case(
        _safetensors_without_factory, ("weights.pt", "holds a state_dict", "--factory")
    ),
    "dict_without_tensors": Case(_dict_without_tensors, ("holds a dict", "'epoch'")),
    "nan_weights": Case(_nan_weights, ("n.pt", "NaN or infinite values", "parameters")),
    "legacy_pickled_module": Case(_legacy_module, ("old.pt", "would import", "DeepLabResNetMTL", "--trust-pickle")),
    "pickle_calling_exec": Case(
        lambda c: c.prune(c.file("evil.pt", __import__("pickle").dumps(_Exec(), protocol=2))),
        ("evil.pt", "would import builtins.exec", "--trust-pickle"),
    ),
    "deflated_zip_checkpoint": Case(_deflated_checkpoint, ("z.pt", "compressed record", "torch.save never writes")),
    # models and factories
    "model_with_one_output": Case(lambda c: c.model("one_output"), ("cannot tell which output", "'depth'")),
    "model_returning_a_string": Case(lambda c: c.model("string_output"), ("returned str", "holds no tensor")),
    "outputs_with_wrong_batch_size": Case(lambda c: c.model("wrong_batch"), ("batch size 2",)),
    "forward_raises": Case(lambda c: c.model("raises"), ("forward failed", "this model cannot run")),
    "factory_returns_no_module": Case(_factory_returning_an_int, ("returned int", "nn.Module")),
    "factory_with_syntax_error": Case(_factory_with_syntax_error, ("broken.py", "--factory")),
    "factory_calling_sys_exit": Case(_factory_calling_sys_exit, ("quits.py", "called sys.exit(3)")),
    "outputs_mapped_to_wrong_heads": Case(
        lambda c: c.prune(None, "--outputs", "depth,segmentation,normal"),
        ("was mapped to task", "channels", "--outputs"),
    ),
    # data folders
    "data_dir_missing": Case(lambda c: c.prune(None, data=c.tmp / "nowhere"), ("nowhere", "does not exist")),
    "missing_train_split": Case(lambda c: c.data(_remove("train")), ("train", "does not exist")),
    "missing_val_split": Case(lambda c: c.data(_remove("val")), ("val", "does not exist")),
    "wrong_label_shape": Case(
        lambda c: c.data(_set("train", "label", 3, lambda a: a[:16, :16])), ("3.npy", "has shape (16, 16)")
    ),
    "wrong_image_channels": Case(
        lambda c: c.data(_set("train", "image", 0, lambda a: a[..., :2])), ("0.npy", "(H, W, 3)")
    ),
    "nan_in_image": Case(lambda c: c.data(_set("train", "image", 0, _with_nan)), ("image", "NaN")),
    "nan_in_val_depth": Case(
        lambda c: c.data(_set("val", "depth", 1, _with_nan)), ("depth", "1.npy", "NaN"), leaves_nothing=False
    ),
    "label_out_of_range": Case(
        lambda c: c.data(_set("train", "label", 1, lambda a: np.where(a == a.flat[0], 20.0, a))),
        ("class id 20", "0..12"),
    ),
    "truncated_npy": Case(
        lambda c: c.data(_replace_bytes("train/normal/4.npy", lambda b: b[: len(b) // 2])), ("4.npy", "truncated")
    ),
    "random_bytes_npy": Case(
        lambda c: c.data(_replace_bytes("train/depth/0.npy", lambda b: b"\x00" * len(b))), ("0.npy", "not a readable")
    ),
    "pickled_npy": Case(lambda c: c.data(_object_array), ("2.npy", "Python objects")),
    "gap_in_file_names": Case(
        lambda c: c.data(lambda r: (r / "train/image/5.npy").rename(r / "train/image/99.npy")), ("5.npy is missing",)
    ),
    "task_folder_count_mismatch": Case(lambda c: c.data(_remove("train", "depth", "23.npy")), ("holds 23 files",)),
    # options
    "sparsity_minus_one": Case(lambda c: c.prune(None, "--sparsity", "-1"), ("--sparsity", "-1")),
    "sparsity_zero": Case(lambda c: c.prune(None, "--sparsity", "0"), ("--sparsity",)),
    "sparsity_one": Case(lambda c: c.prune(None, "--sparsity", "1"), ("--sparsity",)),
    "sparsity_two": Case(lambda c: c.prune(None, "--sparsity", "2"), ("--sparsity",)),
    "sparsity_abc": Case(lambda c: c.prune(None, "--sparsity", "abc"), ("--sparsity", "valid number"), usage=True),
    "steps_zero": Case(lambda c: c.prune(None, "--steps", "0"), ("--steps",)),
    "batch_size_zero": Case(lambda c: c.prune(None, "--batch-size", "0"), ("--batch-size",)),
    "batch_larger_than_the_data": Case(lambda c: c.prune(None, "--batch-size", "64"), ("--batch-size", "64")),
    "lr_nan": Case(lambda c: c.prune(None, "--lr", "nan"), ("--lr",)),
    "unknown_method": Case(lambda c: c.prune(None, "--method", "magic"), ("method", "magic")),
    "unknown_weighting": Case(lambda c: c.prune(None, "--weighting", "magic"), ("--weighting", "magic")),
    "unknown_dataset_adapter": Case(lambda c: c.prune(None, "--data", "nyu2"), ("'nyu2'", "nyuv2")),
    "unknown_task": Case(lambda c: c.prune(None, "--tasks", "seg,albedo"), ("--tasks", "'albedo'")),
    "unknown_device": Case(lambda c: c.prune(None, "--device", "tpu"), ("--device",)),
    "misspelt_option": Case(lambda c: c.prune(None, "--sparsty", "0.5"), ("--sparsty",), usage=True),
    # output folders
    "out_under_a_file": Case(_out_under_a_file, ("--out", "plain.txt", "cannot be used")),
    "out_in_sysfs": Case(_out_in_sysfs, ("--out", "/sys/adapmtl-test-run", "cannot be used")),
    "out_read_only": Case(_out_read_only, ("--out", "cannot be used")),
    "output_folder_full": Case(
        lambda c: c.prune(None, "--save-every", "1"),
        ("cannot write", "latest.pt", "File too large"),
        leaves_nothing=False,
        file_size_limit=256 * 1024,
    ),
    "out_holds_an_earlier_run": Case(
        lambda c: [*c.prune()[:-1], "-q", "--out", c.earlier], ("already holds files", "--resume", "--overwrite")
    ),
    "overwrite_a_foreign_folder": Case(_overwrite_foreign_folder, ("not an adapmtl run folder",), leaves_nothing=False),
    "resume_without_a_run": Case(lambda c: c.prune(None, "--resume"), ("--resume", "no run to resume")),
    "resume_with_corrupt_config": Case(_resume_with_corrupt_config, ("config.json", "not a valid PruneConfig")),
    # damaged run folders
    "config_not_utf8": Case(
        lambda c: ["resume", _damaged_run(c, "config.json", lambda b: b"\xff" + b), "-q"],
        ("config.json", "is not UTF-8 text"),
    ),
    "components_not_utf8": Case(
        lambda c: ["export", _damaged_run(c, "components.json", lambda b: b[:5] + b"\xe9" + b[5:])],
        ("components.json", "is not UTF-8 text"),
    ),
    "report_not_utf8": Case(
        lambda c: ["report", _damaged_run(c, "report.json", lambda b: b"\xfe\xff" + b)],
        ("report.json", "is not UTF-8 text"),
    ),
    "config_of_a_newer_version": Case(
        lambda c: ["resume", _damaged_run(c, "config.json", _newer_schema), "-q"],
        ("config.json", "newer adapmtl", "schema_version 99", "reads up to 1"),
    ),
    "components_of_a_newer_version": Case(
        lambda c: ["export", _damaged_run(c, "components.json", _newer_schema)],
        ("components.json", "schema_version 99"),
    ),
    "report_of_a_newer_version": Case(
        lambda c: ["report", _damaged_run(c, "report.json", _newer_schema)], ("report.json", "schema_version 99")
    ),
    "metrics_line_not_an_object": Case(
        lambda c: ["report", _damaged_run(c, "metrics.jsonl", _line_not_an_object)],
        ("line 2 of", "metrics.jsonl", "not a JSON object"),
    ),
    "truncated_pruned_weights": Case(
        lambda c: ["export", _damaged_run(c, "pruned.safetensors", lambda b: b[: len(b) // 2])],
        ("pruned.safetensors", "not a readable safetensors file", "adapmtl resume"),
    ),
    "checkpoint_replaced_since_the_run": Case(_checkpoint_replaced, ("is not the file this run was pruned from",)),
    "export_folder_full": Case(
        lambda c: ["export", c.earlier, "--out", c.out], ("cannot write", "File too large"), file_size_limit=64 * 1024
    ),
    # crafted sparse files
    "sparse_file_declaring_gigabytes": Case(
        lambda c: _crafted_sparse(c, {"w": ["indices", "float32", [2**31 - 8], 0, 1]}),
        ("crafted.safetensors", "would decode to 8589934560 bytes", "more than the limit"),
    ),
    "sparse_table_listing_its_blob": Case(
        lambda c: _crafted_sparse(c, {"::sparse": [], "w": ["indices", "float32", [4], 0, 1]}), ("'::sparse'", "'::'")
    ),
    "sparse_table_with_a_list_for_a_dtype": Case(
        lambda c: _crafted_sparse(c, {"w": ["indices", ["float32"], [4], 0, 1]}), ("unknown dtype ['float32']",)
    ),
    "sparse_table_nested_too_deep": Case(lambda c: _crafted_sparse(c, "[" * 300_000 + "]" * 300_000), ("levels deep",)),
}


# --- the suite ----------------------------------------------------------------------------------------------


def test_there_are_at_least_25_kinds_of_bad_input() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_error_line_and_damages_nothing(
    name: str, checkpoint: Path, scenes: Path, pruned_run: CliRun, tmp_path: Path
) -> None:
    case = CASES[name]
    ctx = Ctx(tmp_path, checkpoint, scenes, copy_run(pruned_run.path, tmp_path / "earlier"))
    earlier = snapshot_files(ctx.earlier)
    args = case.args(ctx)
    result = _invoke_limited(args, case.file_size_limit)

    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, lines
    if case.usage:
        assert all(line.startswith(("Usage: ", "Try ", "Error: ")) for line in lines), lines
    else:
        assert lines == errors, lines
    message = errors[0][len("Error: ") :]
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert snapshot_files(ctx.earlier) == earlier, "an earlier run folder was changed"
    if case.leaves_nothing:
        assert not ctx.out.exists() or not any(ctx.out.iterdir()), sorted(p.name for p in ctx.out.iterdir())


def _invoke_limited(args: list[object], file_size_limit: int | None):  # type: ignore[no-untyped-def]
    """``invoke`` under a file size limit: writes past it fail with EFBIG, a real full-disk-like OS error."""
    if file_size_limit is None:
        return invoke(*args)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, hard))
    try:
        return invoke(*args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_the_full_folder_case_kept_what_it_had_written(checkpoint: Path, scenes: Path, tmp_path: Path) -> None:
    """After a write fails for lack of space, the files written before it are whole and readable."""
    out = tmp_path / "run"
    args = ["prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, *QUICK, "--save-every", 1]
    result = _invoke_limited(args, 256 * 1024)
    assert result.exit_code == 2
    for name in ("config.json", "components.json", "dense_metrics.json"):
        json.loads((out / name).read_text())
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"


def test_a_safetensors_file_with_a_pt_name_is_read_as_safetensors(
    checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    save_file(torch.load(checkpoint, weights_only=True), str(tmp_path / "weights.pt"))
    result = invoke("inspect", tmp_path / "weights.pt", "--factory", FACTORY, "--data-dir", scenes, "--json")
    assert result.exit_code == 0, result.output
