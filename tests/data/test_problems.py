"""The readers' shared error helpers: how paths are quoted and how many problems one error spells out."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapmtl_cli.data.problems import MAX_PROBLEMS, quoted, raise_problems
from adapmtl_cli.errors import DataError


def test_quoted_writes_paths_and_strings_alike() -> None:
    assert quoted(Path("data/train/0.npy")) == "'data/train/0.npy'" == quoted("data/train/0.npy")


def test_no_problem_raises_nothing() -> None:
    raise_problems([])


def test_a_few_problems_are_all_listed() -> None:
    with pytest.raises(DataError) as info:
        raise_problems(["a is bad", "b is bad"])
    assert str(info.value) == "a is bad; b is bad"


def test_many_problems_are_cut_and_counted() -> None:
    problems = [f"file {i} is bad" for i in range(MAX_PROBLEMS + 2)]
    with pytest.raises(DataError) as info:
        raise_problems(problems)
    assert str(info.value) == "; ".join(problems[:MAX_PROBLEMS] + ["and 2 more"])


def test_require_regular_file_names_what_the_path_is(tmp_path: Path) -> None:
    import os

    from adapmtl_cli.data.problems import require_regular_file

    (tmp_path / "plain").write_bytes(b"x")
    require_regular_file(tmp_path / "plain")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataError, match=r"pipe' is a FIFO \(named pipe\), not a regular file"):
        require_regular_file(tmp_path / "pipe")
    require_regular_file(tmp_path / "missing")  # left to the reader's open, which names it in its own words
