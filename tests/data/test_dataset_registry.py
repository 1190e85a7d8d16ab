"""One contract test over every registered dataset adapter: generated files in, the documented contract out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapmtl_cli.data import DATASETS, DatasetAdapter, get_dataset
from adapmtl_cli.data.synth.generate import generate
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import TaskSpec

# registry name -> the `data synth` layouts whose files it reads
LAYOUTS = {"nyuv2": ("nyuv2", "nyuv2-adashare"), "synthetic": ("nyuv2",), "taskonomy": ("taskonomy",)}


def test_every_registered_dataset_has_a_generator() -> None:
    assert set(DATASETS) == set(LAYOUTS), "register a generator layout for the new dataset in LAYOUTS"


@pytest.mark.parametrize(("name", "layout"), [(n, lay) for n in sorted(LAYOUTS) for lay in LAYOUTS[n]])
def test_adapter_contract(tmp_path: Path, name: str, layout: str) -> None:
    root = tmp_path / layout
    generate(layout, root, train=3, val=2, size=(24, 32), seed=1)
    adapter = get_dataset(name)
    assert isinstance(adapter, DatasetAdapter) and adapter.name == name
    tasks = adapter.tasks(root)
    assert tasks and all(isinstance(t, TaskSpec) for t in tasks)
    names = [t.name for t in tasks]
    assert len(set(names)) == len(names)
    for split, count in (("train", 3), ("val", 2)):
        data = adapter.open(root, split)
        assert len(data) == count  # type: ignore[arg-type]
        image, targets = data[count - 1]
        assert image.dtype == torch.float32 and image.shape == (3, 24, 32)
        assert list(targets) == names
        for task in tasks:
            target = targets[task.name]
            assert target.shape[-2:] == (24, 32)
            loss = task.loss(torch.zeros(1, task.channels, 24, 32, requires_grad=True), target[None])
            assert torch.isfinite(loss)
    desc = adapter.describe(root)
    assert {"root", "layout", "splits", "tasks", "sampled", "class_pixels", "depth_invalid_ratio"} <= set(desc)
    assert desc["tasks"] == names
    assert {s: v["samples"] for s, v in desc["splits"].items()} == {"train": 3, "val": 2}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_unknown_option_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="no option 'colour'"):
        get_dataset(name, {"colour": "red"}).tasks(Path("."))
