"""Open a user's checkpoint safely and turn it into an ``nn.Module``.

Accepted: a state_dict saved with ``torch.save`` (``.pt``/``.pth``/anything) or as ``.safetensors``, possibly
wrapped as ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"model_state_dict": ...}`` and possibly carrying the
``module.`` prefix DistributedDataParallel adds; the architecture then comes from ``--factory module:function``
or ``path/to/file.py:function``. A fully pickled ``nn.Module`` is code, not data: it is loaded only when the user
passes ``--trust-pickle``; otherwise we name the classes it would import without unpickling anything, in the
zip format of ``torch.save`` (torch >= 1.6) and in the legacy format before it (several pickles in a row, read
with ``pickletools``). Zip records must be stored uncompressed, as ``torch.save`` writes them: a compressed one
could inflate a small file to gigabytes.

A factory is user code: what it prints goes to stderr (stdout carries ``--json`` output), and a ``sys.exit``
inside it is a ``CheckpointError``, not the end of the program.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import pickletools
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapmtl_cli.errors import CheckpointError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_DDP_PREFIX = "module."


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for pruning and where it came from."""

    model: nn.Module
    source: str
    """``"state_dict"``, ``"safetensors"`` or ``"pickle"``."""
    factory: str | None


def load_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``module:function`` or ``path/to/file.py:function`` to the callable.

    Raises:
        CheckpointError: the spec is malformed, the module cannot be imported or lacks the function.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise CheckpointError(f"--factory {spec!r} must look like 'package.module:function' or 'file.py:function'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise CheckpointError(f"--factory file {module_part!r} does not exist")
        name = f"_adapmtl_factory_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise CheckpointError(f"--factory file {module_part!r} cannot be imported as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        # The factory file often imports siblings (its own model code): make its folder importable.
        sys.path.insert(0, str(path.resolve().parent))
        with _user_code(spec, "it was imported", lambda e: f"importing --factory file {module_part!r} failed: {e}"):
            module_spec.loader.exec_module(module)
    else:
        with _user_code(spec, "it was imported", lambda e: f"cannot import --factory module {module_part!r}: {e}"):
            module = importlib.import_module(module_part)
    fn = getattr(module, attr, None)
    if not callable(fn):
        callables = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
        close = difflib.get_close_matches(attr, callables, n=1)
        hint = f" (did you mean {f'{module_part}:{close[0]}'!r}?)" if close else ""
        raise CheckpointError(f"--factory {spec!r}: {module_part!r} has no callable {attr!r}{hint}")
    return fn


@contextlib.contextmanager
def _user_code(spec: str, doing: str, failed: Callable[[Exception], str]) -> Iterator[None]:
    """Run a factory's code: its prints go to stderr, its exceptions and ``sys.exit`` become ``CheckpointError``.

    ``KeyboardInterrupt`` (Ctrl-C while the model is built) stays one, saying what was interrupted.

    Args:
        doing: what runs, for the ``sys.exit`` message (``"building the model"``).
        failed: the message of any other exception.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries --json output
            yield
    except SystemExit as exc:
        raise CheckpointError(
            f"--factory {spec!r} called sys.exit({exc.code!r}) while {doing}; a factory must return the model "
            "(or raise an exception saying what is wrong)"
        ) from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted while --factory {spec!r} built the model") from None
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(failed(exc)) from exc


def build_from_factory(spec: str) -> nn.Module:
    """Call the factory with no arguments and check that it returns a module."""
    fn = load_factory(spec)
    with _user_code(spec, "building the model", lambda e: f"--factory {spec!r} raised {type(e).__name__}: {e}"):
        model = fn()
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"--factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _read_raw(path: Path, trust_pickle: bool) -> tuple[Any, str]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; pass the checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{str(path)!r} is not a valid safetensors file ({exc})") from exc
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_records(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "state_dict"
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError depending on damage
        first_error = exc
    if not is_zip and _starts_like_zip(path):
        raise CheckpointError(
            f"{str(path)!r} starts like a torch.save file but is damaged or truncated; copy or save it again"
        ) from first_error
    if not is_zip and not _looks_like_legacy_pickle(path):
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint (not a torch.save zip or pickle); "
            "pass a file written by torch.save or a .safetensors file"
        ) from first_error
    unsafe = _unsafe_globals(path, is_zip)
    if not unsafe:
        raise CheckpointError(f"{str(path)!r} cannot be read ({str(first_error).splitlines()[0]})") from first_error
    # The user's own classes first (they are what the user recognises), then torch's; sorted for stable output.
    unsafe = sorted(unsafe, key=lambda name: (name.startswith(("torch.", "collections.", "builtins.")), name))
    if not trust_pickle:
        shown = ", ".join(unsafe[:6]) + (f" and {len(unsafe) - 6} more" if len(unsafe) > 6 else "")
        raise CheckpointError(
            f"{str(path)!r} is a pickle that would import {shown}; loading it runs code: pass --trust-pickle "
            "only if you trust its source, or save model.state_dict() and pass --factory"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False), "pickle"
    except Exception as exc:
        raise CheckpointError(f"unpickling {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc


def _check_zip_records(path: Path) -> None:
    """Refuse a zip whose records are compressed or claim more bytes than the file has (``torch.save`` stores
    every record as it is: a compressed one is a crafted or re-packed file, and could inflate to gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch.load names the damage
    size = path.stat().st_size
    for info in records:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{str(path)!r} holds a compressed record ({info.filename!r}, method {info.compress_type}), which "
                "torch.save never writes; refused (a small compressed file can inflate to gigabytes): save the "
                "model again with torch.save"
            )
        if info.file_size > size:
            raise CheckpointError(
                f"{str(path)!r} record {info.filename!r} claims {info.file_size} bytes, more than the whole file "
                f"({size}); the file is damaged or crafted: save the model again with torch.save"
            )


def _unsafe_globals(path: Path, is_zip: bool) -> list[str]:
    """What unpickling ``path`` would import beyond torch's ``weights_only`` allow-list (nothing is executed)."""
    try:
        if is_zip:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        return _legacy_unsafe_globals(path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} is a damaged PyTorch checkpoint ({exc})") from exc


# A legacy (pre-1.6) torch.save file: the magic number, the protocol version, the system info and the object,
# each its own pickle, then the raw storage bytes.
_LEGACY_PICKLES = 4
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _legacy_unsafe_globals(path: Path) -> list[str]:
    """The globals of a legacy file's pickles (``pickletools`` reads the opcodes; nothing is unpickled)."""
    found: list[str] = []
    with path.open("rb") as fh:
        for _ in range(_LEGACY_PICKLES):
            start = fh.tell()
            if not fh.read(1):
                break
            fh.seek(start)
            found += _pickle_globals(fh)
    allowed = _allowed_globals()
    return sorted({name for name in found if name not in allowed})


def _pickle_globals(fh: Any) -> list[str]:
    """``module.name`` of every global one pickle would import, up to its STOP opcode.

    ``GLOBAL`` and ``INST`` name it; ``STACK_GLOBAL`` takes the two strings pushed before it (memoised ones
    included); one it cannot resolve is listed as ``"an unresolved global"``.
    """
    names: list[str] = []
    recent: list[str | None] = []  # what the last opcodes pushed, when they pushed a known string
    memo: dict[Any, str | None] = {}
    for op, arg, _ in pickletools.genops(fh):
        if op.name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            names.append(f"{_PYTHON2_MODULES.get(module, module)}.{attr}")
        elif op.name == "STACK_GLOBAL":
            module_name = recent[-2:]
            if len(module_name) == 2 and module_name[0] is not None and module_name[1] is not None:
                names.append(f"{_PYTHON2_MODULES.get(module_name[0], module_name[0])}.{module_name[1]}")
            else:
                names.append("an unresolved global")
        if op.name in _STRING_OPS:
            recent.append(str(arg))
        elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = recent[-1] if recent else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(arg))
        else:
            recent.append(None)
    return names


def _allowed_globals() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` accepts (torch's own list and ``add_safe_globals``)."""
    allowed: set[str] = set()
    try:
        from torch import _weights_only_unpickler

        allowed |= set(_weights_only_unpickler._get_allowed_globals())
        allowed |= set(_weights_only_unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError):  # a torch without them: every global is listed
        pass
    return allowed


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file under another name: an 8-byte little-endian header size, then a JSON object."""
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _starts_like_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _looks_like_legacy_pickle(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5


def _unwrap(raw: Any) -> Any:
    """Peel ``{"state_dict": ...}``-style wrappers until a module or a flat tensor dict is left."""
    for _ in range(3):
        if isinstance(raw, Mapping) and not _is_tensor_dict(raw):
            inner = next((raw[k] for k in _WRAPPER_KEYS if k in raw), None)
            if inner is None:
                break
            raw = inner
    return raw


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_ddp_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        return {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatched keys."""
    expected = set(model.state_dict().keys())
    got = set(state.keys())
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} keys the model has ({_preview(missing)})")
    if unexpected:
        problems.append(f"has {len(unexpected)} keys the model lacks ({_preview(unexpected)})")
    if problems:
        raise CheckpointError(f"{where} does not fit the model: " + "; ".join(problems) + "; check --factory")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{where} does not fit the model: {detail[:400]}; check --factory") from exc


def _preview(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def load_model(path: Path, factory: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Open ``path`` and return the model it describes, in eval mode on the CPU.

    Raises:
        CheckpointError: the file is missing, damaged, an untrusted pickle, lacks an architecture, or its
            tensors do not fit the factory's model.
    """
    raw, source = _read_raw(Path(path), trust_pickle)
    raw = _unwrap(raw)
    if isinstance(raw, nn.Module):
        model = raw
        if factory is not None:
            load_state_into(build := build_from_factory(factory), raw.state_dict(), repr(str(path)))
            model = build
        _check_finite_parameters(model, path)
        return LoadedModel(model=model.eval(), source="pickle", factory=factory)
    if not _is_tensor_dict(raw):
        kind = type(raw).__name__
        keys = f" with keys {_preview(sorted(map(str, raw.keys())))}" if isinstance(raw, Mapping) else ""
        raise CheckpointError(
            f"{str(path)!r} holds a {kind}{keys}, not a state_dict or model; "
            "save model.state_dict() (or the whole module and pass --trust-pickle)"
        )
    state = dict(raw)
    if factory is None:
        raise CheckpointError(
            f"{str(path)!r} holds a state_dict ({len(state)} tensors) but no architecture; "
            "pass --factory package.module:function or file.py:function that builds the model"
        )
    model = build_from_factory(factory)
    load_state_into(model, _fit_ddp_prefix(state, model), repr(str(path)))
    _check_finite_parameters(model, path)
    return LoadedModel(model=model.eval(), source=source, factory=factory)


def _check_finite_parameters(model: nn.Module, path: Path) -> None:
    """Refuse NaN or infinite weights (buffers may hold ``-inf`` on purpose, e.g. attention masks)."""
    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not bool(p.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds NaN or infinite values in {len(bad)} parameters ({_preview(bad)}); "
            "its training diverged or the file is damaged: pass an earlier checkpoint"
        )


def _fit_ddp_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` prefix only when that is what makes the keys fit the model."""
    expected = set(model.state_dict().keys())
    if set(state) == expected:
        return state
    stripped = _strip_ddp_prefix(state)
    return stripped if set(stripped) == expected else state
