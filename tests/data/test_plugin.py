"""Dataset plug-ins (``--data path/to/plugin.py`` or ``package.module``): loading, validation, one-line errors."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner, Result

from adapmtl_cli.cli.app import app
from adapmtl_cli.config import make_prune_config
from adapmtl_cli.data import DatasetAdapter, get_dataset
from adapmtl_cli.data.plugin import PluginSplit, load_plugin
from adapmtl_cli.errors import ConfigError, DataError
from adapmtl_cli.jobs.prepare import prepare
from adapmtl_cli.jobs.prune import run_prune
from adapmtl_cli.tasks.classification import Classification, Multilabel, Regression

HEADER = """
import torch
from torch.utils.data import Dataset
from adapmtl_cli.tasks.base import MetricSpec

TASKS = [
    {"kind": "classification", "name": "left", "num_classes": 3},
    {"kind": "regression", "name": "sum"},
]


class Pairs(Dataset):
    def __init__(self, n, options):
        self.n, self.options, self.epochs = n, options, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 4, 4), float(i)), {"left": torch.tensor(i % 3), "sum": torch.tensor([float(i)])}

    def set_epoch(self, epoch, seed):
        self.epochs.append((epoch, seed))
"""

VALID = (
    HEADER
    + """
def dataset(root, split, **options):
    return Pairs(6 if split == "train" else 3, options)
"""
)


def _write(folder: Path, source: str, name: str = "plugin.py") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return str(folder / name)


def _load_error(reference: str, options: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_plugin(reference, options or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def _open_error(source: str, tmp_path: Path, split: str = "train") -> str:
    adapter = load_plugin(_write(tmp_path, source), {})
    with pytest.raises(DataError) as info:
        adapter.open(tmp_path, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def _invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


# --- a working plug-in ----------------------------------------------------------------------------------


def test_a_plugin_file_is_a_dataset_adapter(tmp_path: Path) -> None:
    reference = _write(tmp_path, VALID)
    adapter = get_dataset(reference)
    assert isinstance(adapter, DatasetAdapter) and adapter.name == reference
    tasks = adapter.tasks(tmp_path)
    assert tasks == [Classification(num_classes=3, name="left"), Regression(name="sum")]
    train, val = adapter.open(tmp_path, "train"), adapter.open(tmp_path, "val")
    assert (len(train), len(val)) == (6, 3)
    x, y = train[4]
    assert torch.equal(x, torch.full((1, 4, 4), 4.0)) and int(y["left"]) == 1 and y["sum"].tolist() == [4.0]
    with pytest.raises(IndexError):
        train[6]
    x, y = next(iter(DataLoader(train, batch_size=4)))
    assert x.shape == (4, 1, 4, 4) and y["left"].shape == (4,) and y["sum"].shape == (4, 1)
    assert tasks[0].loss(torch.zeros(4, 3), y["left"]).item() == pytest.approx(torch.log(torch.tensor(3.0)).item())


def test_options_arrive_as_keyword_strings_and_set_epoch_is_forwarded(tmp_path: Path) -> None:
    adapter = load_plugin(_write(tmp_path, VALID), {"limit": "2", "mode": "fast"})
    train = adapter.open(tmp_path, "train")
    assert train.data.options == {"limit": "2", "mode": "fast"}
    train.set_epoch(3, 7)
    assert train.data.epochs == [(3, 7)]


def test_a_plugin_module_is_imported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "plugpkg_by_name", "")
    _write(tmp_path / "plugpkg_by_name", VALID, "digits.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = get_dataset("plugpkg_by_name.digits")
    assert adapter.name == "plugpkg_by_name.digits" and len(adapter.open(tmp_path, "val")) == 3


def test_a_plugin_file_imports_its_siblings_during_import_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "SAMPLES = 5\n", "sibling_for_plugin_test.py")
    source = VALID.replace("6 if split", "SAMPLES if split") + "\nfrom sibling_for_plugin_test import SAMPLES\n"
    reference = _write(tmp_path, source)
    monkeypatch.delitem(sys.modules, "sibling_for_plugin_test", raising=False)
    adapter = load_plugin(reference, {})
    monkeypatch.delitem(sys.modules, "sibling_for_plugin_test")
    assert len(adapter.open(tmp_path, "train")) == 5
    assert str(tmp_path) not in sys.path


def test_python_numbers_become_tensors(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
def dataset(root, split):
    return [(torch.zeros(1, 2, 2), {"left": 2, "sum": 1.5})] * 4
"""
    )
    x, y = load_plugin(_write(tmp_path, source), {}).open(tmp_path, "train")[0]
    assert y["left"].dtype == torch.int64 and int(y["left"]) == 2
    assert y["sum"].dtype == torch.float32 and float(y["sum"]) == 1.5


def test_generic_summary_for_data_check(tmp_path: Path) -> None:
    adapter = load_plugin(_write(tmp_path, VALID), {})
    summary = adapter.describe(tmp_path)
    assert summary == {
        "root": str(tmp_path),
        "layout": "plugin",
        "plugin": adapter.name,
        "splits": {
            "train": {"folder": "train", "samples": 6, "size": [1, 4, 4]},
            "val": {"folder": "val", "samples": 3, "size": [1, 4, 4]},
        },
        "tasks": ["left", "sum"],
        "sampled": {"split": "val", "samples": 0},
        "class_pixels": None,
        "depth_invalid_ratio": None,
    }


def test_the_plugins_describe_is_merged_over_the_generic_summary(tmp_path: Path) -> None:
    source = VALID + "\ndef describe(root):\n    return {'layout': 'pairs', 'note': root.name}\n"
    summary = load_plugin(_write(tmp_path, source), {}).describe(tmp_path)
    assert summary["layout"] == "pairs" and summary["note"] == tmp_path.name
    assert summary["splits"]["train"]["samples"] == 6


def test_data_check_json_works_for_a_plugin(tmp_path: Path) -> None:
    reference = _write(tmp_path, VALID)
    result = _invoke("data", "check", tmp_path, "--data", reference, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"] == ["left", "sum"]


def test_what_a_plugin_prints_never_reaches_machine_readable_stdout(tmp_path: Path) -> None:
    """``--json`` output stays parseable whatever the plug-in prints: at import, in its functions, per item."""
    noisy = VALID.replace("import torch\n", "import torch\nprint('importing the plug-in')\n", 1)
    noisy = noisy.replace(
        "    def __getitem__(self, i):\n", "    def __getitem__(self, i):\n        print('item', i)\n"
    )
    noisy = noisy.replace(
        "def dataset(root, split, **options):\n", "def dataset(root, split, **options):\n    print(split)\n"
    )
    reference = _write(tmp_path, noisy)
    result = _invoke("data", "check", tmp_path, "--data", reference, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"] == ["left", "sum"]
    assert "importing the plug-in" in result.stderr and "item 0" in result.stderr


def test_cli_reports_a_broken_plugin_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    reference = _write(tmp_path, "TASKS = [\n")
    result = _invoke("data", "check", tmp_path, "--data", reference)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().startswith(f"Error: --data plug-in {reference!r} has a syntax error at line 1")


# --- custom TaskSpec objects ----------------------------------------------------------------------------

CUSTOM = """
import torch
from adapmtl_cli.tasks.base import MetricSpec

class Energy:
    name = "energy"
    channels = 1
    metrics = (MetricSpec("err", higher_is_better=False),)

    def __init__(self, fail=None):
        self.fail = fail

    def loss(self, pred, target):
        if self.fail == "loss":
            raise ValueError("bad shapes")
        return (pred.flatten() - target).abs().mean()

    def new_meter(self):
        if self.fail == "meter":
            raise ValueError("no meter today")
        return Meter(self.fail)

class Meter:
    def __init__(self, fail):
        self.fail, self.total, self.n = fail, 0.0, 0

    def update(self, pred, target):
        self.total += float((pred.flatten() - target).abs().sum())
        self.n += target.numel()

    def compute(self):
        return {"wrong": 0.0} if self.fail == "compute" else {"err": self.total / self.n}

TASKS = [Energy(FAIL)]

def dataset(root, split):
    return [(torch.zeros(2), {"energy": torch.tensor(float(i))}) for i in range(4)]
"""


def test_a_custom_taskspec_is_used_through_a_checked_wrapper(tmp_path: Path) -> None:
    (task,) = load_plugin(_write(tmp_path, CUSTOM.replace("FAIL", "None")), {}).tasks(tmp_path)
    assert task.name == "energy" and task.channels == 1 and [m.name for m in task.metrics] == ["err"]
    assert task.loss(torch.tensor([[1.0], [5.0]]), torch.tensor([2.0, 2.0])).item() == pytest.approx(2.0)
    meter = task.new_meter()
    meter.update(torch.tensor([[1.0], [5.0]]), torch.tensor([2.0, 2.0]))
    assert meter.compute() == {"err": 2.0}


def test_errors_inside_a_custom_task_name_the_function(tmp_path: Path) -> None:
    reference = _write(tmp_path, CUSTOM.replace("FAIL", "'loss'"))
    (task,) = load_plugin(reference, {}).tasks(tmp_path)
    with pytest.raises(
        DataError, match=r"^plug-in '.*plugin.py': task 'energy' loss\(\) raised ValueError: bad shapes$"
    ):
        task.loss(torch.zeros(1, 1), torch.zeros(1))
    (task,) = load_plugin(_write(tmp_path, CUSTOM.replace("FAIL", "'compute'")), {}).tasks(tmp_path)
    with pytest.raises(DataError, match=r"compute\(\) returned \{'wrong': 0.0\}; return a dict with the declared"):
        task.new_meter().compute()
    message = _load_error(_write(tmp_path, CUSTOM.replace("FAIL", "'meter'")))
    assert message.endswith("task 'energy' new_meter() raised ValueError: no meter today")


# --- load errors: one ConfigError line each ------------------------------------------------------------

VALID_DATASET = "\ndef dataset(root, split):\n    return []\n"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("import torch\nTASKS = []\ndef dataset(root split):\n    pass\n", "has a syntax error at line 3:"),
        ("import not_a_module_qq\n", "failed: ModuleNotFoundError: No module named 'not_a_module_qq'"),
        ("raise RuntimeError('boom at import')\n", "failed: RuntimeError: boom at import"),
        ("x = 1\n", "must define a TASKS list and a function dataset(root, split, **options) at module level"),
        ("TASKS = []\ndataset = 3\n", "must define a function dataset(root, split, **options)"),
        ("TASKS = []\ndescribe = {}" + VALID_DATASET, "must define describe as a function describe(root) -> dict"),
        ("TASKS = 'classification'" + VALID_DATASET, "TASKS must be a non-empty list of task declarations"),
        ("TASKS = []" + VALID_DATASET, "TASKS must be a non-empty list of task declarations, got []"),
        ("TASKS = [{'name': 'a'}]" + VALID_DATASET, "TASKS[0] needs a 'kind' string (e.g. 'classification'), got None"),
        ("TASKS = [{'kind': 'clasification'}]" + VALID_DATASET, "TASKS[0] has unknown kind 'clasification'; kinds: "),
        ("TASKS = [{'kind': 'depth', 'name': ''}]" + VALID_DATASET, "TASKS[0] 'name' must be a non-empty string"),
        (
            "TASKS = [{'kind': 'regression'}, {'kind': 'classification', 'classes': 4}]" + VALID_DATASET,
            "TASKS[1] ('classification'): kind 'classification' has no option 'classes' "
            "(options: ignore_index, num_classes)",
        ),
        (
            "TASKS = [{'kind': 'classification', 'name': 'left', 'num_classes': 1}]" + VALID_DATASET,
            "TASKS[0] ('left'): classification 'left' needs num_classes >= 2, got 1",
        ),
        (
            "TASKS = [{'kind': 'regression', 'name': 'a'}, {'kind': 'depth', 'name': 'a'}]" + VALID_DATASET,
            "TASKS names 'a' twice; give each task its own name",
        ),
        (
            "class Spec:\n    pass\nTASKS = [Spec]" + VALID_DATASET,
            "TASKS[0] is the class Spec; put an instance, Spec(...), in TASKS",
        ),
        (
            "TASKS = [object()]" + VALID_DATASET,
            "TASKS[0] lacks 'name'; plug-in",
        ),
        (
            "class Spec:\n    name = 'a'\n    channels = 0\n    metrics = [3]\n    loss = 1\n    def new_meter(self):"
            "\n        pass\nTASKS = [Spec()]" + VALID_DATASET,
            "TASKS[0].channels must be an int >= 1, got 0; plug-in",
        ),
    ],
)
def test_load_errors(source: str, fragment: str, tmp_path: Path) -> None:
    reference = _write(tmp_path, source)
    message = _load_error(reference)
    assert fragment in message and repr(reference) in message


def test_a_custom_spec_lists_every_problem(tmp_path: Path) -> None:
    source = (
        "class Spec:\n    name = 'a'\n    channels = 0\n    metrics = [3]\n    loss = 1\n"
        "    def new_meter(self):\n        pass\nTASKS = [Spec()]" + VALID_DATASET
    )
    message = _load_error(_write(tmp_path, source))
    assert "TASKS[0].channels must be an int >= 1, got 0" in message
    assert "TASKS[0].metrics[0] must have a name (str) and higher_is_better (bool)" in message
    assert "TASKS[0].loss must be a method, got int" in message
    assert message.endswith("(Spec is neither a task declaration dict nor a TaskSpec)")


def test_missing_file_folder_and_module(tmp_path: Path) -> None:
    assert _load_error(str(tmp_path / "nope.py")) == (
        f"--data plug-in file {str(tmp_path / 'nope.py')!r} does not exist; pass path/to/plugin.py"
    )
    assert "is a folder; pass the plug-in's .py file" in _load_error(str(tmp_path) + "/")
    assert _load_error("no_such_plugin_pkg_qq.data").startswith(
        "cannot find --data plug-in module 'no_such_plugin_pkg_qq.data' (no module named 'no_such_plugin_pkg_qq')"
    )


@pytest.mark.parametrize(
    ("signature", "options", "fragment"),
    [
        ("root, split", {"size": "3"}, "has no option 'size' (it takes no --data-opt options)"),
        ("root, split, limit=None", {"size": "3"}, "has no option 'size' (its options: limit)"),
        ("root, split, *, limit", {}, "cannot be called with --data-opt {}: missing a required argument: 'limit'"),
        ("root", {}, "cannot be called with --data-opt {}: too many positional arguments"),
    ],
)
def test_options_the_dataset_function_does_not_take(
    signature: str, options: dict[str, str], fragment: str, tmp_path: Path
) -> None:
    source = f"TASKS = [{{'kind': 'regression'}}]\ndef dataset({signature}):\n    return []\n"
    assert fragment in _load_error(_write(tmp_path, source), options)


# --- open errors: one DataError line each --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("raise FileNotFoundError('no data under here')", "dataset(root, 'train') raised FileNotFoundError: no data"),
        ("return 5", "dataset(root, 'train') returned int; return a torch.utils.data.Dataset"),
        ("return []", "dataset(root, 'train') is empty; check --data-dir"),
        ("return [{'left': 1}]", "dataset(root, 'train')[0] is a dict; return (input tensor, {task: target})"),
        ("return [(1.0, {})]", "dataset(root, 'train')[0] input is a float;"),
        (
            "return [(torch.zeros(1), {'left': torch.tensor(0)})]",
            "dataset(root, 'train')[0] targets are ['left']; return (input tensor, {task: target}) with the tasks "
            "['left', 'sum']",
        ),
        (
            "return [(torch.zeros(1), {'left': 'cat', 'sum': 1.0})]",
            "dataset(root, 'train')[0] target 'left' is a str; return a tensor",
        ),
    ],
)
def test_open_errors(body: str, fragment: str, tmp_path: Path) -> None:
    message = _open_error(HEADER + f"\ndef dataset(root, split):\n    {body}\n", tmp_path)
    assert message.startswith("plug-in '") and fragment in message


def test_unknown_split_and_late_item_errors(tmp_path: Path) -> None:
    source = HEADER + "\nclass Broken(Pairs):\n    def __getitem__(self, i):\n        return super().__getitem__(i)"
    source += " if i < 2 else {}[i]\n\ndef dataset(root, split):\n    return Broken(4, {})\n"
    assert _open_error(source, tmp_path, split="dev") == "unknown split 'dev'; use 'train', 'val' or 'test'"
    train = load_plugin(_write(tmp_path, source), {}).open(tmp_path, "train")
    assert isinstance(train, PluginSplit)
    with pytest.raises(DataError, match=r"': dataset\(root, 'train'\)\[3\] raised KeyError: 3$"):
        train[3]


def test_errors_in_describe(tmp_path: Path) -> None:
    for body, fragment in [
        ("raise OSError('disk gone')", "describe(root) raised OSError: disk gone"),
        ("return [1]", "describe(root) returned list; return a dict"),
    ]:
        source = VALID + f"\ndef describe(root):\n    {body}\n"
        with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            load_plugin(_write(tmp_path, source), {}).describe(tmp_path)


# --- through the pipeline: per-sample (B, C) outputs -------------------------------------------------------

PIPELINE_PLUGIN = """
import torch

TASKS = [
    {"kind": "classification", "name": "kind", "num_classes": 3},
    {"kind": "multilabel", "name": "tags", "num_labels": 2},
    {"kind": "regression", "name": "size", "num_outputs": 1, "loss": "mse"},
]

def dataset(root, split):
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    items = []
    for i in range(8 if split == "train" else 4):
        x = torch.randn(1, 6, 6, generator=gen)
        tags = torch.tensor([i % 2, -1 if i == 3 else (i // 2) % 2])
        items.append((x, {"kind": torch.tensor(i % 3), "tags": tags, "size": torch.tensor([float(i)])}))
    return items
"""

PIPELINE_MODEL = """
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.kind = nn.Linear(32, 3)
        self.tags = nn.Linear(32, 2)
        self.size = nn.Sequential(nn.Unflatten(1, (32, 1, 1)), nn.Conv2d(32, 1, 1))

    def forward(self, x):
        f = self.trunk(x)
        return {"kind": self.kind(f), "tags": self.tags(f), "size": self.size(f)}

def build():
    return Net()
"""


def test_prepare_and_a_short_prune_run_on_per_sample_outputs(tmp_path: Path) -> None:
    plugin = _write(tmp_path, PIPELINE_PLUGIN)
    factory = _write(tmp_path, PIPELINE_MODEL, "net_for_plugin_test.py")
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(PIPELINE_MODEL), "net", "exec"), namespace)
    torch.save(namespace["build"]().state_dict(), tmp_path / "dense.pt")  # type: ignore[operator]
    common = {"factory": f"{factory}:build", "data": plugin, "data_dir": str(tmp_path)}
    prepared = prepare(str(tmp_path / "dense.pt"), trust_pickle=False, **common)  # type: ignore[arg-type]
    assert [type(t) for t in prepared.tasks] == [Classification, Multilabel, Regression]
    assert prepared.mapping.how == "names"
    assert {c.name for c in prepared.cmap.components} == {"backbone", "head:kind", "head:tags", "head:size"}
    cfg = make_prune_config(
        checkpoint=str(tmp_path / "dense.pt"),
        **common,
        sparsity=0.5,
        steps=4,
        batch_size=4,
        device="cpu",
        out=str(tmp_path / "run"),
    )
    report = run_prune(cfg)
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.001)
    assert {name: sorted(m.pruned) for name, m in report.tasks.items()} == {
        "kind": ["accuracy", "macro_f1"],
        "tags": ["accuracy", "macro_f1"],
        "size": ["mae", "rmse"],
    }
