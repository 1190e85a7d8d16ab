"""The checked readers: every fault of a file we read is one error of the caller's class, naming the file.

Classes covered: missing, a folder, a FIFO (never opened: it would block), not UTF-8, not JSON, JSON nested
deeper than ``MAX_JSON_DEPTH`` (hundreds of thousands of levels included), the wrong JSON kind, a JSON-lines
line that is valid JSON but not an object, a file model of a newer ``schema_version``, a truncated safetensors
file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapmtl_cli.config import ComponentsManifest, PruneConfig
from adapmtl_cli.errors import ConfigError, DataError, ExportError
from adapmtl_cli.files.reading import (
    MAX_JSON_DEPTH,
    parse_json,
    read_json,
    read_json_object,
    read_jsonl,
    read_model,
    read_safetensors,
)

DEEP = b"[" * 300_000 + b"]" * 300_000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": ', "is not valid JSON (line 1 column 7: Expecting value)"),
        (b"", "is not valid JSON (line 1 column 1: Expecting value)"),
        (b'{"a": "\xff"}', "is not UTF-8 text (byte 7 is 0xff)"),
        (DEEP, f"nests arrays or objects more than {MAX_JSON_DEPTH} levels deep"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "levels deep"),
        (b'{"n": 1' + b"0" * 5000 + b"}", "is not valid JSON"),  # past Python's int-string conversion limit
    ],
)
def test_read_json_turns_every_fault_into_the_callers_error(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "index.json"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_json(path, DataError, "dataset index", "regenerate it")
    message = str(info.value)
    assert message.startswith(f"dataset index {str(path)!r} ") and message.endswith("; regenerate it")
    assert expected in message and "\n" not in message


def test_json_at_the_depth_limit_and_a_byte_order_mark_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_bytes(b"\xef\xbb\xbf" + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert read_json(path, DataError, "x") is not None


def test_missing_folder_and_fifo_are_refused_without_opening(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'.*nope.json' does not exist; check the path"):
        read_json(tmp_path / "nope.json", ConfigError, "file")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_json(tmp_path, ConfigError, "file")
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(ConfigError, match="pipe.json' is not a regular file"):
        read_json(tmp_path / "pipe.json", ConfigError, "file")


def test_read_json_object_names_the_kind_it_found(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match=r"holds a JSON array, expected an object; check the path$"):
        read_json_object(tmp_path / "m.json", ExportError, "manifest")
    (tmp_path / "m.json").write_text('{"a": 1}')
    assert read_json_object(tmp_path / "m.json", ExportError, "manifest") == {"a": 1}


def test_parse_json_names_what_it_parsed() -> None:
    with pytest.raises(ExportError, match="^sparse table nests arrays"):
        parse_json(DEEP.decode(), ExportError, "sparse table", "re-export")


@pytest.mark.parametrize("line", [b"[1, 2]", b"3", b'"text"', b"null", b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}"])
def test_a_log_line_that_is_not_an_object_is_named_with_its_number(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n' + line + b'\n{"step": 2}\n')
    with pytest.raises(ConfigError, match=r"^line 2 of log '.*metrics.jsonl' is not a JSON object of one record"):
        read_jsonl(path)


def test_a_log_that_is_not_utf8_is_an_error_and_a_cut_last_line_is_not(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 1}]
    path.write_bytes(b'{"step": 1}\n{"x": "\xff"}\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_jsonl(path)


def test_read_model_names_a_newer_schema_version_everywhere_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"checkpoint": "m.pt", "data_dir": "d", "out": "o", "schema_version": 99}')
    with pytest.raises(ConfigError) as info:
        read_model(path, PruneConfig)
    assert str(info.value) == (
        f"{str(path)!r}: written by a newer adapmtl (schema_version 99; this build reads up to 1); "
        "upgrade adapmtl to read it"
    )
    entry = '{"name": "b", "kind": "backbone", "tasks": [], "modules": [], "params": 1, "prunable_params": 1, '
    manifest = (
        '{"tasks": [], "outputs": {}, "output_paths": {}, "output_mapping": "names", "components": ['
        + entry
        + '"schema_version": 7}], "layers": [], "unreached": [], "excluded": [], "prunable_params": 1, '
        '"total_params": 1, "input_shape": [3]}'
    )
    (tmp_path / "components.json").write_text(manifest)
    with pytest.raises(ConfigError, match="schema_version 7; this build reads up to 1"):
        read_model(tmp_path / "components.json", ComponentsManifest)


def test_read_model_refuses_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_bytes(b'{"method": "\xe9"}')
    with pytest.raises(ConfigError, match=r"report.json' is not UTF-8 text \(byte 12 is 0xe9\)"):
        read_model(tmp_path / "report.json", ComponentsManifest)


def test_read_safetensors_names_a_truncated_file(tmp_path: Path) -> None:
    save_file({"w": torch.arange(1000.0)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"^pruned weights '.*w.safetensors' is not a readable safetensors file"):
        read_safetensors(tmp_path / "w.safetensors", ConfigError, "pruned weights", "resume the run")
