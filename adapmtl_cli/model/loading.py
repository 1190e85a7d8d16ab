"""Open a user's checkpoint safely and turn it into an ``nn.Module``.

Accepted: a state_dict saved with ``torch.save`` (``.pt``/``.pth``/anything) or as ``.safetensors``, possibly
wrapped as ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"model_state_dict": ...}`` and possibly carrying the
``module.`` prefix DistributedDataParallel adds; the architecture then comes from ``--factory module:function``
or ``path/to/file.py:function``. A fully pickled ``nn.Module`` is code, not data: it is loaded only when the user
passes ``--trust-pickle``; otherwise we name the classes it would import without unpickling anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from collections.abc import Callable, Mapping
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
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise CheckpointError(f"importing --factory file {module_part!r} failed: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise CheckpointError(f"cannot import --factory module {module_part!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CheckpointError(f"--factory {spec!r}: {module_part!r} has no callable {attr!r}")
    return fn


def build_from_factory(spec: str) -> nn.Module:
    """Call the factory with no arguments and check that it returns a module."""
    fn = load_factory(spec)
    try:
        model = fn()
    except Exception as exc:
        raise CheckpointError(f"--factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
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
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "state_dict"
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError depending on damage
        first_error = exc
    if not zipfile.is_zipfile(path) and _starts_like_zip(path):
        raise CheckpointError(
            f"{str(path)!r} starts like a torch.save file but is damaged or truncated; copy or save it again"
        ) from first_error
    if not zipfile.is_zipfile(path) and not _looks_like_legacy_pickle(path):
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint (not a torch.save zip or pickle); "
            "pass a file written by torch.save or a .safetensors file"
        ) from first_error
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} is a damaged PyTorch checkpoint ({exc})") from exc
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
