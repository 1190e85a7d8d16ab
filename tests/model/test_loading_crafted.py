"""Checkpoints in the legacy format, crafted pickles and zips, and factories that exit, get interrupted or print.

Classes covered: a whole model saved in the pre-1.6 (non-zip) format (refused with the classes it would import
and ``--trust-pickle`` named; loaded with the flag), a legacy or raw pickle calling ``builtins.exec`` (named, not
called "damaged"; protocols 2 and 4), a zip with compressed or over-long records, a ``--factory`` raising
``SystemExit`` or ``KeyboardInterrupt`` at import or when called, one printing to stdout, a mistyped function.
"""

from __future__ import annotations

import io
import pickle
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from test_loading import _error  # one-line CheckpointError message of load_model
from tiny_models import HardShared

from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.model.loading import build_from_factory, load_factory, load_model

# --- legacy (pre-1.6) torch.save files ---------------------------------------------------------------


def test_a_legacy_whole_model_names_its_classes_and_the_flag(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HardShared()
    torch.save(model, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    message = _error(tmp_path / "old.pt")
    assert "is a pickle that would import tiny_models.HardShared" in message and "--trust-pickle" in message
    assert "damaged" not in message
    loaded = load_model(tmp_path / "old.pt", trust_pickle=True)
    assert loaded.source == "pickle"
    got, want = loaded.model.state_dict(), model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_legacy_state_dict_loads_without_the_flag(tmp_path: Path) -> None:
    torch.save(HardShared().state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert load_model(tmp_path / "old.pt", factory="tiny_models:HardShared").source == "state_dict"


class _Exec:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("raise SystemExit('the pickle ran')",))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_calling_exec_is_named_not_damaged(tmp_path: Path, protocol: int, legacy: bool) -> None:
    path = tmp_path / "evil.pt"
    if legacy:  # the legacy layout: magic number, protocol, system info, then the object
        with path.open("wb") as fh:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
                pickle.dump(header, fh, protocol=protocol)
            pickle.dump(_Exec(), fh, protocol=protocol)
    else:
        path.write_bytes(pickle.dumps(_Exec(), protocol=protocol))
    message = _error(path)
    assert "would import builtins.exec" in message and "--trust-pickle" in message


# --- zip records ----------------------------------------------------------------------------------------


def _repacked(source: Path, target: Path, compression: int) -> Path:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", compression=compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return target


def test_a_compressed_zip_record_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(100_000)}, tmp_path / "plain.pt")
    path = _repacked(tmp_path / "plain.pt", tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 10_000  # 400 kB of zeros inflate from a few kB
    message = _error(path, factory="tiny_models:HardShared")
    assert "holds a compressed record" in message and "torch.save never writes" in message


def test_a_zip_record_claiming_more_than_the_file_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(10)}, tmp_path / "plain.pt")
    data = bytearray((tmp_path / "plain.pt").read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last central-directory entry: patch its uncompressed size
    data[central + 24 : central + 28] = (10**9).to_bytes(4, "little")
    (tmp_path / "big.pt").write_bytes(bytes(data))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        assert archive.infolist()[-1].file_size == 10**9
    assert "claims 1000000000 bytes, more than the whole file" in _error(tmp_path / "big.pt")


# --- factories that are user code -----------------------------------------------------------------------


@pytest.fixture
def odd_factories(tmp_path: Path) -> Path:
    path = tmp_path / "odd_factories.py"
    path.write_text(
        textwrap.dedent(
            """
            import sys
            from tiny_models import HardShared

            print("importing the factory file")

            def exits():
                sys.exit(3)

            def interrupted():
                raise KeyboardInterrupt

            def noisy():
                print("building the model")
                return HardShared()

            def build_model():
                return HardShared()
            """
        )
    )
    return path


def test_a_factory_calling_sys_exit_is_a_checkpoint_error(odd_factories: Path) -> None:
    with pytest.raises(CheckpointError, match=r"called sys.exit\(3\) while building the model; a factory must"):
        build_from_factory(f"{odd_factories}:exits")


def test_a_factory_file_exiting_at_import_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit('no GPU here')\n")
    with pytest.raises(CheckpointError, match=r"called sys.exit\('no GPU here'\) while it was imported"):
        load_factory(f"{tmp_path / 'quits.py'}:build")


def test_an_interrupted_factory_says_what_was_interrupted(odd_factories: Path) -> None:
    with pytest.raises(KeyboardInterrupt) as info:
        build_from_factory(f"{odd_factories}:interrupted")
    assert str(info.value) == f"interrupted while --factory '{odd_factories}:interrupted' built the model"


def test_what_a_factory_prints_goes_to_stderr(odd_factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_from_factory(f"{odd_factories}:noisy")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "importing the factory file" in captured.err and "building the model" in captured.err


def test_a_mistyped_factory_function_gets_a_suggestion(odd_factories: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no callable 'buildmodel' \(did you mean '.*:build_model'\?\)"):
        load_factory(f"{odd_factories}:buildmodel")
    with pytest.raises(CheckpointError, match=r"has no callable 'xyz'$"):
        load_factory(f"{odd_factories}:xyz")


def test_inspect_json_stays_parseable_when_the_factory_prints(tmp_path: Path) -> None:
    import json

    from noisy_run import write_noisy_inputs
    from typer.testing import CliRunner

    from adapmtl_cli.cli.app import app

    inputs = write_noisy_inputs(tmp_path)
    (tmp_path / "chatty.py").write_text(
        "print('loading weights...')\nfrom noisy_net import build as _build\n\n"
        "def build():\n    print('building')\n    return _build()\n"
    )
    args = ["inspect", inputs["checkpoint"], "--factory", f"{tmp_path / 'chatty.py'}:build"]
    args += ["--data", inputs["data"], "--data-dir", inputs["data_dir"], "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"] == ["kind", "size"]
    assert "building" in result.stderr


def test_prune_says_nothing_was_saved_when_the_factory_is_interrupted(tmp_path: Path) -> None:
    from noisy_run import write_noisy_inputs
    from typer.testing import CliRunner

    from adapmtl_cli.cli.app import app

    inputs = write_noisy_inputs(tmp_path)
    (tmp_path / "stops.py").write_text("def build():\n    raise KeyboardInterrupt\n")
    args = ["prune", inputs["checkpoint"], "--factory", f"{tmp_path / 'stops.py'}:build", "--data", inputs["data"]]
    args += ["--data-dir", inputs["data_dir"], "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    assert "built the model; nothing was saved" in result.stderr and "state is kept" not in result.stderr
    assert not (tmp_path / "run").exists()
