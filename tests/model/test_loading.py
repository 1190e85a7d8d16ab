"""Checkpoint loading: state_dicts with a factory, safetensors, wrappers, DDP prefixes, pickles, damaged files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import HardShared, WithLinear
from torch import nn

from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.model.loading import build_from_factory, load_factory, load_model

FACTORY = "tiny_models:HardShared"


def _reference() -> HardShared:
    torch.manual_seed(3)
    model = HardShared()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
    return model


def _assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@pytest.fixture
def factories(tmp_path: Path) -> Path:
    """A factory file: ``wrapper`` (only child named ``module``), ``raising`` and ``not_a_module``."""
    path = tmp_path / "factories.py"
    path.write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Wrapper(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.module = nn.Conv2d(3, 4, 3)

            def wrapper():
                return Wrapper()

            def raising():
                raise RuntimeError("cuda not available")

            def not_a_module():
                return {"conv": 1}
            """
        )
    )
    return path


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


# --- state_dicts ---------------------------------------------------------------------------------


def test_state_dict_with_module_factory(tmp_path: Path) -> None:
    reference = _reference()
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt", factory=FACTORY)
    assert isinstance(loaded.model, HardShared)
    assert loaded.source == "state_dict"
    assert loaded.factory == FACTORY
    assert not loaded.model.training
    _assert_same_state(loaded.model, reference)


def test_state_dict_with_file_factory_that_imports_a_sibling(tmp_path: Path) -> None:
    (tmp_path / "adapmtl_test_parts.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Conv2d(3, 4, 3)
                    self.head = nn.Linear(4, 2)
            """
        )
    )
    (tmp_path / "my_model.py").write_text("from adapmtl_test_parts import Net\n\ndef build():\n    return Net()\n")
    torch.manual_seed(1)
    reference = build_from_factory(f"{tmp_path / 'my_model.py'}:build")
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    torch.manual_seed(2)  # the factory's fresh init must be overwritten by the checkpoint
    loaded = load_model(tmp_path / "weights.pth", factory=f"{tmp_path / 'my_model.py'}:build")
    assert type(loaded.model).__name__ == "Net"
    _assert_same_state(loaded.model, reference)


def test_safetensors(tmp_path: Path) -> None:
    reference = _reference()
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path / "model.safetensors", factory=FACTORY)
    assert loaded.source == "safetensors"
    _assert_same_state(loaded.model, reference)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dict(tmp_path: Path, key: str) -> None:
    reference = _reference()
    torch.save({key: reference.state_dict(), "epoch": 7, "best": 0.5}, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt", factory=FACTORY)
    _assert_same_state(loaded.model, reference)


def test_ddp_prefix_is_stripped(tmp_path: Path) -> None:
    reference = _reference()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "ddp.pt")
    loaded = load_model(tmp_path / "ddp.pt", factory=FACTORY)
    _assert_same_state(loaded.model, reference)


def test_module_prefix_kept_when_the_model_itself_has_it(tmp_path: Path, factories: Path) -> None:
    reference = build_from_factory(f"{factories}:wrapper")
    assert all(key.startswith("module.") for key in reference.state_dict())
    torch.save(reference.state_dict(), tmp_path / "wrapper.pt")
    loaded = load_model(tmp_path / "wrapper.pt", factory=f"{factories}:wrapper")
    _assert_same_state(loaded.model, reference)


def test_state_dict_without_factory_asks_for_one(tmp_path: Path) -> None:
    torch.save(_reference().state_dict(), tmp_path / "model.pt")
    assert "--factory" in _error(tmp_path / "model.pt")


def test_missing_and_unexpected_keys_are_counted(tmp_path: Path) -> None:
    state = _reference().state_dict()
    del state["heads.depth.0.weight"], state["heads.depth.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "model.pt")
    message = _error(tmp_path / "model.pt", factory=FACTORY)
    assert "lacks 2 keys" in message
    assert "has 1 keys" in message
    assert "'heads.depth.0.bias'" in message and "'extra.weight'" in message


def test_shape_mismatch_is_a_checkpoint_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(HardShared(width=4).state_dict(), tmp_path / "narrow.pt")
    assert "does not fit the model" in _error(tmp_path / "narrow.pt", factory=FACTORY)


@pytest.mark.parametrize(
    ("obj", "expected"), [([1, 2, 3], "holds a list"), ({"epoch": 3}, "holds a dict with keys 'epoch'")]
)
def test_no_tensors_in_checkpoint(tmp_path: Path, obj: object, expected: str) -> None:
    torch.save(obj, tmp_path / "odd.pt")
    assert expected in _error(tmp_path / "odd.pt", factory=FACTORY)


# --- pickled modules -----------------------------------------------------------------------------


def test_pickled_module_refused_without_trust(tmp_path: Path) -> None:
    torch.save(_reference(), tmp_path / "whole.pt")
    message = _error(tmp_path / "whole.pt")
    assert "tiny_models.HardShared" in message
    assert "--trust-pickle" in message


def test_pickled_module_loaded_with_trust(tmp_path: Path) -> None:
    reference = _reference()
    torch.save(reference, tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert loaded.source == "pickle"
    assert isinstance(loaded.model, HardShared)
    assert not loaded.model.training
    _assert_same_state(loaded.model, reference)


def test_pickled_module_with_factory_loads_into_the_factory_model(tmp_path: Path) -> None:
    reference = _reference()
    torch.save(reference, tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", factory=FACTORY, trust_pickle=True)
    assert loaded.model is not reference
    _assert_same_state(loaded.model, reference)


def test_pickle_refusal_names_user_classes_even_among_many_torch_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save(WithLinear(), tmp_path / "whole.pt")  # 8 classes: more than the message shows
    real = torch.serialization.get_unsafe_globals_in_checkpoint

    def torch_first(path: object) -> list[str]:  # one order the real function (a set) may return
        return sorted(real(path), key=lambda name: not name.startswith("torch."))

    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", torch_first)
    message = _error(tmp_path / "whole.pt")
    assert "WithLinear" in message and "_ChannelLinearHead" in message


# --- damaged or wrong files ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.pt", factory=FACTORY)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    assert "folder" in _error(tmp_path, factory=FACTORY)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.pt", factory=FACTORY)


def test_random_bytes(tmp_path: Path) -> None:
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    (tmp_path / "noise.pt").write_bytes(b"\x00" + bytes(noise.tolist()))
    assert "not a PyTorch checkpoint" in _error(tmp_path / "noise.pt", factory=FACTORY)


def test_json_file(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"weights": [1, 2, 3]}')
    assert "not a PyTorch checkpoint" in _error(tmp_path / "model.json", factory=FACTORY)


@pytest.mark.parametrize("whole", [False, True], ids=["state_dict", "pickled_module"])
def test_truncated_zip(tmp_path: Path, whole: bool) -> None:
    reference = _reference()
    torch.save(reference if whole else reference.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    assert "half.pt" in _error(tmp_path / "half.pt", factory=FACTORY, trust_pickle=True)


def test_invalid_safetensors(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    assert "not a valid safetensors file" in _error(tmp_path / "bad.safetensors", factory=FACTORY)


# --- factories -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tiny_models", "must look like"),
        ("tiny_models:", "must look like"),
        (":HardShared", "must look like"),
        ("no_such_module_xyz:build", "cannot import"),
        ("tiny_models:NoSuchThing", "has no callable 'NoSuchThing'"),
        ("tiny_models:DEFAULT_TASKS", "has no callable"),
        ("missing/dir/model.py:build", "does not exist"),
        ("{factories}:raising", "raised RuntimeError: cuda not available"),
        ("{factories}:not_a_module", "returned dict, not a torch.nn.Module"),
    ],
)
def test_bad_factory(tmp_path: Path, factories: Path, spec: str, expected: str) -> None:
    torch.save(_reference().state_dict(), tmp_path / "model.pt")
    assert expected in _error(tmp_path / "model.pt", factory=spec.format(factories=factories))


def test_factory_file_with_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def build(:\n")
    with pytest.raises(CheckpointError, match="importing --factory file"):
        load_factory(f"{tmp_path / 'broken.py'}:build")
