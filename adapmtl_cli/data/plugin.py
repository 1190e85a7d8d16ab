"""Load the user's own dataset code (``--data path/to/plugin.py`` or ``--data package.module``) as an adapter.

The plug-in interface: a Python file or importable module defining, at module level,

``TASKS``
    A list with one entry per task, in the order they are reported. An entry is either

    - a dict declaring a built-in kind: ``{"kind": "classification", "name": "left", "num_classes": 10}``.
      ``kind`` is any registered task kind (``segmentation``, ``depth``, ``normal``, ``classification``,
      ``multilabel``, ``regression``, ...; ``adapmtl_cli.tasks.TASKS`` lists them); ``name`` defaults to the
      kind; every other key is an option of that kind (``num_classes``, ``num_labels``, ``num_outputs``,
      ``loss``, ``ignore_index``, ...); or
    - an object satisfying :class:`adapmtl_cli.tasks.base.TaskSpec`: ``name`` (str), ``channels`` (int >= 1,
      outputs per sample or pixel), ``metrics`` (non-empty sequence of
      :class:`~adapmtl_cli.tasks.base.MetricSpec`-like objects: ``name`` str, ``higher_is_better`` bool),
      ``loss(pred, target) -> scalar tensor`` and ``new_meter()`` returning an object with
      ``update(pred, target)`` and ``compute() -> {metric name: float}`` pooled over everything it saw.

``dataset(root: Path, split: str, **options) -> Dataset``
    The ``split`` (``"train"`` or ``"val"``; ``"test"``, the held-out split, with ``prune --eval-split test``;
    raise for a split you do not have) of the data under ``root`` (``--data-dir``): any object with
    ``__len__`` and ``__getitem__`` (a ``torch.utils.data.Dataset``, even a list). Item ``i`` is
    ``(input, {task name: target})`` with a tensor input and exactly the task names of ``TASKS``; a target is a
    tensor in its kind's format (a Python int or float is turned into a 0-d tensor). ``--data-opt KEY=VALUE``
    options arrive as keyword arguments whose values are strings; a plug-in accepts those it names as
    parameters (or all, with ``**options``). A dataset with ``set_epoch(epoch, seed)`` is told each epoch.

``describe(root: Path) -> dict`` (optional)
    Extra or overriding keys (JSON-serialisable values) merged over the generic summary of
    ``adapmtl data check`` (see :meth:`~adapmtl_cli.data.base.DatasetAdapter.describe`).

A file is imported under a private module name with its own folder on ``sys.path`` during the import, so it
can import the modules next to it at its top. Problems with the module or its declarations raise
``ConfigError``; problems with what ``dataset`` returns, or exceptions raised inside the plug-in's functions
while data is read or scored, raise ``DataError``; both name the plug-in, the function and what was expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from adapmtl_cli.data.base import SPLITS, Sample, unknown_split
from adapmtl_cli.errors import AdapmtlError, ConfigError, DataError
from adapmtl_cli.tasks import TASKS as TASK_KINDS
from adapmtl_cli.tasks import canonical_task_name
from adapmtl_cli.tasks.base import MetricMeter, MetricSpec, TaskSpec

_DESCRIBED = ("train", "val")
"""The splits ``data check`` opens; a plug-in's ``describe(root)`` can report its test split."""
_MAX_MESSAGE = 300


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:_MAX_MESSAGE]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call(reference: str, what: str, error: type[AdapmtlError], fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)`` with any exception turned into one ``error`` line naming the plug-in and ``what``.

    Our own errors pass through; running out of memory is not the plug-in's fault and is not relabelled. What
    the plug-in prints goes to stderr: stdout carries ``--json`` and ``--log-format jsonl`` output.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return fn(*args, **kw)
    except (AdapmtlError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:
        raise error(f"plug-in {reference!r}: {what} raised {_one_line(exc)}") from exc


# --- importing ---------------------------------------------------------------------------------------------


def _import_file(reference: str) -> ModuleType:
    path = Path(reference)
    if not path.exists():
        raise ConfigError(f"--data plug-in file {reference!r} does not exist; pass path/to/plugin.py")
    if not path.is_file():
        raise ConfigError(f"--data plug-in {reference!r} is a folder; pass the plug-in's .py file")
    resolved = path.resolve()
    name = "_adapmtl_plugin_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--data plug-in {reference!r} cannot be imported as Python; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so dataclasses and pickling inside the file find their module.
    sys.modules[name] = module
    folder = str(resolved.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        where = "" if exc.filename in (None, str(resolved)) else f" of {exc.filename!r}"
        raise ConfigError(
            f"--data plug-in {reference!r} has a syntax error at line {exc.lineno}{where}: {exc.msg}; fix the file"
        ) from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"importing --data plug-in {reference!r} failed: {_one_line(exc)}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(reference: str) -> ModuleType:
    try:
        return importlib.import_module(reference)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (reference == exc.name or reference.startswith(exc.name + ".")):
            raise ConfigError(
                f"cannot find --data plug-in module {reference!r} (no module named {exc.name!r}); install it, "
                "run from the folder that holds it, or pass the file as path/to/plugin.py"
            ) from None
        raise ConfigError(f"importing --data plug-in module {reference!r} failed: {_one_line(exc)}") from exc
    except SyntaxError as exc:
        raise ConfigError(
            f"--data plug-in module {reference!r} has a syntax error at line {exc.lineno} of {exc.filename!r}: "
            f"{exc.msg}; fix the file"
        ) from None
    except Exception as exc:
        raise ConfigError(f"importing --data plug-in module {reference!r} failed: {_one_line(exc)}") from exc


def import_plugin(reference: str) -> ModuleType:
    """Import ``reference``: a file when it ends in ``.py`` or holds a path separator, else a module name."""
    with contextlib.redirect_stdout(sys.stderr):  # what the module prints at import must not reach stdout
        if reference.endswith(".py") or "/" in reference or "\\" in reference:
            return _import_file(reference)
        return _import_module(reference)


# --- task declarations -------------------------------------------------------------------------------------


def _factory_options(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword options ``factory`` takes (besides ``name``), and whether it takes any (``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"name"}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _declared_task(reference: str, where: str, entry: Mapping[str, Any]) -> TaskSpec:
    """Build the built-in kind an entry like ``{"kind": "classification", "name": "left", ...}`` declares."""
    options = dict(entry)
    kind = options.pop("kind", None)
    if not isinstance(kind, str):
        raise ConfigError(f"{where} needs a 'kind' string (e.g. 'classification'), got {kind!r}")
    name = options.pop("name", kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} 'name' must be a non-empty string, got {name!r}")
    key = kind if kind in TASK_KINDS else canonical_task_name(kind)
    if key not in TASK_KINDS:
        raise ConfigError(f"{where} has unknown kind {kind!r}; kinds: {', '.join(sorted(TASK_KINDS))}")
    factory = TASK_KINDS[key]
    known, any_option = _factory_options(factory)
    unknown = sorted(set(options) - known) if not any_option else []
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{where} ({name!r}): kind {key!r} has no option {unknown[0]!r} (options: {takes})")
    try:
        return factory(name=name, **options)
    except ConfigError as exc:
        raise ConfigError(f"{where} ({name!r}): {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where} ({name!r}): building kind {key!r} raised {_one_line(exc)}") from exc


def _attribute(spec: object, attr: str, problems: list[str], where: str) -> Any:
    try:
        return getattr(spec, attr)
    except AttributeError:
        problems.append(f"{where} lacks {attr!r}")
    except Exception as exc:
        problems.append(f"{where}.{attr} raised {_one_line(exc)}")
    return None


def _custom_task(reference: str, where: str, spec: object) -> TaskSpec:
    """Check an object against the ``TaskSpec`` protocol and wrap it so its errors name the plug-in."""
    problems: list[str] = []
    name = _attribute(spec, "name", problems, where)
    if name is not None and (not isinstance(name, str) or not name):
        problems.append(f"{where}.name must be a non-empty string, got {name!r}")
    channels = _attribute(spec, "channels", problems, where)
    if channels is not None and (type(channels) is not int or channels < 1):
        problems.append(f"{where}.channels must be an int >= 1, got {channels!r}")
    metrics = _metric_specs(where, _attribute(spec, "metrics", problems, where), problems)
    for method in ("loss", "new_meter"):
        fn = _attribute(spec, method, problems, where)
        if fn is not None and not callable(fn):
            problems.append(f"{where}.{method} must be a method, got {type(fn).__name__}")
    if problems:
        kind = type(spec).__name__
        raise ConfigError(f"{'; '.join(problems)} ({kind} is neither a task declaration dict nor a TaskSpec)")
    checked = _CheckedTask(reference, spec, name, channels, metrics)
    checked.new_meter(error=ConfigError)  # fail now, not after the first epoch
    return checked


def _metric_specs(where: str, metrics: Any, problems: list[str]) -> tuple[MetricSpec, ...]:
    if metrics is None:
        return ()
    if isinstance(metrics, (str, bytes)) or not isinstance(metrics, Sequence) or not metrics:
        problems.append(f"{where}.metrics must be a non-empty list of MetricSpec, got {metrics!r}")
        return ()
    out = []
    for i, metric in enumerate(metrics):
        name = getattr(metric, "name", None)
        higher = getattr(metric, "higher_is_better", None)
        if not isinstance(name, str) or not name or type(higher) is not bool:
            problems.append(
                f"{where}.metrics[{i}] must have a name (str) and higher_is_better (bool), e.g. "
                f"MetricSpec('mae', higher_is_better=False); got {metric!r}"
            )
            continue
        out.append(MetricSpec(name, higher, str(getattr(metric, "unit", "") or "")))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        problems.append(f"{where}.metrics repeats a name: {names}")
    return tuple(out)


class _CheckedTask:
    """A plug-in's own ``TaskSpec``; exceptions from its code become one-line ``DataError``s naming it."""

    def __init__(self, reference: str, spec: Any, name: str, channels: int, metrics: tuple[MetricSpec, ...]) -> None:
        self.reference = reference
        self.spec = spec
        self.name = name
        self.channels = channels
        self.metrics = metrics

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = _call(self.reference, f"task {self.name!r} loss()", DataError, self.spec.loss, pred, target)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise DataError(
                f"plug-in {self.reference!r}: task {self.name!r} loss() returned {type(value).__name__}; "
                "return a scalar tensor attached to pred"
            )
        return value.reshape(())

    def new_meter(self, error: type[AdapmtlError] = DataError) -> MetricMeter:
        meter = _call(self.reference, f"task {self.name!r} new_meter()", error, self.spec.new_meter)
        if not (callable(getattr(meter, "update", None)) and callable(getattr(meter, "compute", None))):
            raise error(
                f"plug-in {self.reference!r}: task {self.name!r} new_meter() returned {type(meter).__name__}; "
                "return an object with update(pred, target) and compute()"
            )
        return _CheckedMeter(self, meter)


class _CheckedMeter:
    """A plug-in meter whose errors, and a ``compute`` lacking a declared metric, name the plug-in."""

    def __init__(self, task: _CheckedTask, meter: Any) -> None:
        self.task = task
        self.meter = meter

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        what = f"task {self.task.name!r} meter update()"
        _call(self.task.reference, what, DataError, self.meter.update, pred, target)

    def compute(self) -> dict[str, float]:
        what = f"task {self.task.name!r} meter compute()"
        values = _call(self.task.reference, what, DataError, self.meter.compute)
        names = [m.name for m in self.task.metrics]
        if not isinstance(values, Mapping) or any(n not in values for n in names):
            raise DataError(
                f"plug-in {self.task.reference!r}: {what} returned {values!r}; return a dict with the "
                f"declared metrics {names}"
            )
        return {n: float(values[n]) for n in names}


def build_tasks(reference: str, declared: Any) -> list[TaskSpec]:
    """The ``TaskSpec`` of each ``TASKS`` entry, in order; names must be unique."""
    if isinstance(declared, (str, bytes, Mapping)) or not isinstance(declared, Sequence) or not declared:
        raise ConfigError(
            f"plug-in {reference!r}: TASKS must be a non-empty list of task declarations, got {declared!r}"
        )
    tasks: list[TaskSpec] = []
    for i, entry in enumerate(declared):
        where = f"plug-in {reference!r}: TASKS[{i}]"
        if isinstance(entry, type):
            cls = entry.__name__
            raise ConfigError(f"{where} is the class {cls}; put an instance, {cls}(...), in TASKS")
        if isinstance(entry, Mapping):
            tasks.append(_declared_task(reference, where, entry))
        else:
            tasks.append(_custom_task(reference, where, entry))
    names = [t.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"plug-in {reference!r}: TASKS names {repeated[0]!r} twice; give each task its own name")
    return tasks


# --- the adapter -------------------------------------------------------------------------------------------


def _as_target(value: Any) -> Any:
    """Python numbers become 0-d tensors (int64 or float32), as the default collate would make them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return torch.tensor(value, dtype=torch.int64 if isinstance(value, int) else torch.float32)


class PluginSplit(Dataset[Sample]):
    """One opened split of a plug-in; every item is checked to be ``(tensor, {declared task: tensor})``."""

    def __init__(self, reference: str, split: str, data: Any, length: int, task_names: tuple[str, ...]) -> None:
        self.reference = reference
        self.split = split
        self.data = data
        self.length = length
        self.task_names = task_names

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not -self.length <= index < self.length:
            raise IndexError(f"sample {index} is out of range for {self.length} samples")
        index %= self.length
        what = f"dataset(root, {self.split!r})[{index}]"
        item = _call(self.reference, what, DataError, self.data.__getitem__, index)
        expected = f"return (input tensor, {{task: target}}) with the tasks {list(self.task_names)}"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"plug-in {self.reference!r}: {what} is a {type(item).__name__}; {expected}")
        x, targets = item
        if not isinstance(x, torch.Tensor):
            raise DataError(f"plug-in {self.reference!r}: {what} input is a {type(x).__name__}; {expected}")
        if not isinstance(targets, Mapping) or set(targets) != set(self.task_names):
            got = sorted(map(str, targets)) if isinstance(targets, Mapping) else type(targets).__name__
            raise DataError(f"plug-in {self.reference!r}: {what} targets are {got}; {expected}")
        out = {name: _as_target(targets[name]) for name in self.task_names}
        bad = [name for name, value in out.items() if not isinstance(value, torch.Tensor)]
        if bad:
            kind = type(out[bad[0]]).__name__
            raise DataError(f"plug-in {self.reference!r}: {what} target {bad[0]!r} is a {kind}; return a tensor")
        return x, out

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Forwarded to the plug-in's dataset when it has ``set_epoch`` (random augmentation)."""
        inner = getattr(self.data, "set_epoch", None)
        if callable(inner):
            _call(self.reference, f"dataset(root, {self.split!r}).set_epoch()", DataError, inner, epoch, seed)


class PluginAdapter:
    """A :class:`~adapmtl_cli.data.base.DatasetAdapter` backed by a plug-in module; ``name`` is the reference."""

    def __init__(self, reference: str, module: ModuleType, options: Mapping[str, str]) -> None:
        self.name = reference
        problems = []
        if not hasattr(module, "TASKS"):
            problems.append("a TASKS list")
        dataset = getattr(module, "dataset", None)
        if not callable(dataset):
            problems.append("a function dataset(root, split, **options)")
        describe = getattr(module, "describe", None)
        if describe is not None and not callable(describe):
            problems.append("describe as a function describe(root) -> dict (or no describe at all)")
        if problems:
            raise ConfigError(f"plug-in {reference!r} must define {' and '.join(problems)} at module level")
        self.options = dict(options)
        self._dataset = cast("Callable[..., Any]", dataset)  # checked callable above
        _check_options(reference, self._dataset, self.options)
        self._describe: Callable[..., Any] | None = describe
        self._tasks = build_tasks(reference, module.TASKS)

    def tasks(self, root: Path) -> list[TaskSpec]:
        """The tasks ``TASKS`` declares, in its order (the same for every root)."""
        return list(self._tasks)

    def open(self, root: Path, split: str) -> PluginSplit:
        """Call ``dataset(root, split, **options)`` and check its length and first item.

        Raises:
            DataError: the split is unknown, the call raised, or the result is not a non-empty indexable
                dataset of ``(tensor, {task: target})`` with exactly the declared tasks.
        """
        if split not in SPLITS:
            raise unknown_split(split)
        what = f"dataset(root, {split!r})"
        data = _call(self.name, what, DataError, self._dataset, Path(root), split, **self.options)
        if not (callable(getattr(data, "__len__", None)) and callable(getattr(data, "__getitem__", None))):
            raise DataError(
                f"plug-in {self.name!r}: {what} returned {type(data).__name__}; return a "
                "torch.utils.data.Dataset (an object with __len__ and __getitem__)"
            )
        length = _call(self.name, f"len({what})", DataError, len, data)
        if length < 1:
            raise DataError(f"plug-in {self.name!r}: {what} is empty; check --data-dir {str(root)!r}")
        opened = PluginSplit(self.name, split, data, length, tuple(t.name for t in self._tasks))
        opened.__getitem__(0)  # checks the item's structure now, not in the first training batch
        return opened

    def describe(self, root: Path) -> dict[str, Any]:
        """Open train and val and summarise them; keys from the plug-in's ``describe(root)`` override these."""
        splits: dict[str, dict[str, Any]] = {}
        for split in _DESCRIBED:
            opened = self.open(root, split)
            splits[split] = {"folder": split, "samples": len(opened), "size": list(opened[0][0].shape)}
        summary: dict[str, Any] = {
            "root": str(root),
            "layout": "plugin",
            "plugin": self.name,
            "splits": splits,
            "tasks": [t.name for t in self._tasks],
            "sampled": {"split": "val", "samples": 0},
            "class_pixels": None,
            "depth_invalid_ratio": None,
        }
        if self._describe is not None:
            extra = _call(self.name, "describe(root)", DataError, self._describe, Path(root))
            if not isinstance(extra, Mapping):
                raise DataError(f"plug-in {self.name!r}: describe(root) returned {type(extra).__name__}; return a dict")
            summary.update(extra)
        return summary


def _check_options(reference: str, dataset: Callable[..., Any], options: Mapping[str, str]) -> None:
    """Raise ``ConfigError`` unless ``dataset(root, split, **options)`` matches the function's signature."""
    try:
        signature = inspect.signature(dataset)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        named = [p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in options:
            if key not in named:
                takes = f"its options: {', '.join(named)}" if named else "it takes no --data-opt options"
                raise ConfigError(f"--data {reference} has no option {key!r} ({takes})")
    try:
        signature.bind(Path("."), "train", **options)
    except TypeError as exc:
        raise ConfigError(
            f"plug-in {reference!r}: dataset(root, split, **options) cannot be called with --data-opt "
            f"{dict(options)!r}: {exc}; define it as def dataset(root, split, **options)"
        ) from None


def load_plugin(reference: str, options: Mapping[str, str]) -> PluginAdapter:
    """Import the plug-in ``reference`` names and check its interface (see the module docstring).

    Raises:
        ConfigError: the file or module cannot be found or imported, a member is missing or wrongly typed, a
            task declaration is invalid, or an option is one ``dataset`` does not take.
    """
    return PluginAdapter(reference, import_plugin(reference), options)
