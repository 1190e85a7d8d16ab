"""Output mapping: dict keys and aliases, channel counts, nested tuples, ``--outputs`` names, and the errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TupleOutput
from torch import Tensor

from adapmtl_cli.errors import DiscoveryError
from adapmtl_cli.model.outputs import flatten_outputs, map_outputs
from adapmtl_cli.tasks import get_task
from adapmtl_cli.tasks.base import TaskSpec

B = 2


def _tasks(*names: str, classes: int = 13) -> list[TaskSpec]:
    return [get_task(n, num_classes=classes) if n == "segmentation" else get_task(n) for n in names]


TASKS = _tasks("segmentation", "depth", "normal")


def _map(channels: int) -> Tensor:
    return torch.randn(B, channels, 4, 6)


def _error(raw: object, tasks: list[TaskSpec], names: list[str] | None = None, batch: int = B) -> str:
    with pytest.raises(DiscoveryError) as info:
        map_outputs(raw, tasks, batch, names)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_dict_with_canonical_names() -> None:
    raw = {"normal": _map(3), "segmentation": _map(13), "depth": _map(1)}
    mapping = map_outputs(raw, TASKS, B)
    assert mapping.how == "names"
    assert mapping.paths == {"segmentation": ("segmentation",), "depth": ("depth",), "normal": ("normal",)}
    assert list(mapping.paths) == ["segmentation", "depth", "normal"]  # dataset order, not the model's


def test_dict_with_aliases() -> None:
    raw = {"seg": _map(13), "depth_zbuffer": _map(1), "sn": _map(3)}
    mapping = map_outputs(raw, TASKS, B)
    assert mapping.paths == {"segmentation": ("seg",), "depth": ("depth_zbuffer",), "normal": ("sn",)}
    selected = mapping.select(raw)
    assert selected["segmentation"] is raw["seg"]
    assert selected["depth"] is raw["depth_zbuffer"]
    assert selected["normal"] is raw["sn"]


def test_dict_mixes_names_and_channels() -> None:
    raw = {"seg": _map(13), "out_a": _map(3), "out_b": _map(1)}
    mapping = map_outputs(raw, TASKS, B)
    assert mapping.how == "names+channels"
    assert mapping.paths == {"segmentation": ("seg",), "depth": ("out_b",), "normal": ("out_a",)}


def test_flat_tuple_by_unique_channels() -> None:
    raw = (_map(1), _map(3), _map(13))
    mapping = map_outputs(raw, TASKS, B)
    assert mapping.how == "channels"
    assert mapping.paths == {"segmentation": (2,), "depth": (0,), "normal": (1,)}
    selected = mapping.select(raw)
    assert selected["segmentation"] is raw[2] and selected["depth"] is raw[0] and selected["normal"] is raw[1]


def test_nested_tuple_from_tiny_model(tuple_output: TupleOutput, tiny_images: Tensor) -> None:
    raw = tuple_output(tiny_images)
    mapping = map_outputs(raw, TASKS, B)
    assert mapping.paths == {"segmentation": (0, 0), "depth": (0, 1), "normal": (0, 2)}
    assert mapping.describe() == {"segmentation": "0.0", "depth": "0.1", "normal": "0.2"}
    selected = mapping.select(raw)
    for i, task in enumerate(["segmentation", "depth", "normal"]):
        assert selected[task] is raw[0][i]


def test_subset_of_tasks() -> None:
    raw = ([_map(13), _map(1), _map(3)], torch.randn(B, 16))
    mapping = map_outputs(raw, _tasks("normal"), B)
    assert mapping.paths == {"normal": (0, 2)}


def test_same_channels_positional_is_ambiguous() -> None:
    tasks = _tasks("segmentation", "normal", classes=3)
    message = _error((_map(3), _map(3)), tasks)
    assert "--outputs" in message
    assert "'segmentation'" in message and "'normal'" in message


def test_one_task_matching_two_outputs_is_ambiguous() -> None:
    assert "--outputs" in _error((_map(13), _map(1), _map(1), _map(3)), TASKS)


def test_outputs_names_with_skips() -> None:
    raw = (_map(3), torch.randn(B, 16), _map(3), _map(1))
    tasks = _tasks("segmentation", "normal", "depth", classes=3)
    mapping = map_outputs(raw, tasks, B, names=["sn", "_", "seg", "depth"])
    assert mapping.how == "--outputs"
    assert mapping.paths == {"segmentation": (2,), "normal": (0,), "depth": (3,)}


def test_outputs_names_wrong_channels() -> None:
    message = _error((_map(13), _map(1), _map(3)), _tasks("segmentation", "depth"), names=["seg", "_", "depth"])
    assert "output 2 (2, 3, 4, 6) was mapped to task 'depth', which needs 1 channels" in message


def test_outputs_names_unknown_task() -> None:
    assert "'albedo'" in _error((_map(13), _map(1), _map(3)), TASKS, names=["seg", "albedo", "normal"])


def test_outputs_names_more_than_outputs() -> None:
    assert "names 4 outputs" in _error((_map(13), _map(1), _map(3)), TASKS, names=["seg", "depth", "normal", "_"])


def test_outputs_names_leaving_a_task_out() -> None:
    assert "'normal'" in _error((_map(13), _map(1), _map(3)), TASKS, names=["seg", "depth"])


def test_outputs_names_same_task_twice() -> None:
    tasks = _tasks("segmentation", "normal", classes=3)
    _error((_map(3), _map(3), _map(3)), tasks, names=["seg", "seg", "normal"])


def test_dict_with_wrong_channels() -> None:
    raw = {"segmentation": _map(13), "depth": _map(2), "normal": _map(3)}
    message = _error(raw, TASKS)
    assert "'depth'" in message and "needs 1 channels" in message


def test_model_returning_a_string() -> None:
    assert "holds no tensor" in _error("segmentation", TASKS)


def test_wrong_batch_size() -> None:
    message = _error({"segmentation": _map(13), "depth": _map(1), "normal": _map(3)}, TASKS, batch=5)
    assert "batch size 5" in message


def test_flatten_outputs_paths_and_shapes() -> None:
    raw = {"a": [_map(1), (torch.zeros(B, 2),)], "b": "text", "c": None}
    leaves = flatten_outputs(raw, B)
    assert [(leaf.path, leaf.shape) for leaf in leaves] == [(("a", 0), (B, 1, 4, 6)), (("a", 1, 0), (B, 2))]
    assert [leaf.label for leaf in leaves] == ["a.0", "a.1.0"]


def test_single_tensor_output_for_one_task() -> None:
    raw = _map(1)
    mapping = map_outputs(raw, _tasks("depth"), B)
    assert mapping.paths == {"depth": ()}
    assert mapping.describe() == {"depth": "<output>"}
    assert mapping.select(raw)["depth"] is raw


# --- nested outputs: deep supervision (MTI-Net style), and --outputs TASK=PATH -------------------------------


def _mti_net() -> dict[str, object]:
    """MTI-Net's output: the final predictions beside 1/4-resolution auxiliary ones per scale."""
    aux = {
        f"scale_{i}": {"semseg": _map(13), "depth": _map(1), "normals": _map(3), f"features_{i}": _map(16)}
        for i in range(4)
    }
    return {"deep_supervision": aux, "semseg": _map(13), "depth": _map(1), "normals": _map(3)}


def test_deep_supervision_maps_the_shallowest_outputs() -> None:
    raw = _mti_net()
    mapping = map_outputs(raw, TASKS, B)
    assert mapping.paths == {"segmentation": ("semseg",), "depth": ("depth",), "normal": ("normals",)}
    assert mapping.how == "names"
    selected = mapping.select(raw)
    assert selected["segmentation"] is raw["semseg"] and selected["normal"] is raw["normals"]


def test_several_matches_at_one_depth_are_refused_with_their_paths() -> None:
    raw = _mti_net()
    del raw["semseg"]
    message = _error(raw, TASKS)
    assert message == (
        "task 'segmentation' matches 4 outputs at the same depth (deep_supervision.scale_0.semseg, "
        "deep_supervision.scale_1.semseg, deep_supervision.scale_2.semseg, deep_supervision.scale_3.semseg); "
        "pass --outputs segmentation=PATH with the one to use (e.g. --outputs "
        "segmentation=deep_supervision.scale_0.semseg)"
    )
    assert "matches 2 outputs" in _error({"seg": _map(13), "semseg": _map(13), "depth": _map(1)}, TASKS[:2])


def test_outputs_by_key_or_dotted_path() -> None:
    raw = _mti_net()
    names = ["segmentation=semseg", "depth=deep_supervision.scale_3.depth", "normal=normals"]
    mapping = map_outputs(raw, TASKS, B, names)
    assert mapping.paths == {
        "segmentation": ("semseg",),
        "depth": ("deep_supervision", "scale_3", "depth"),
        "normal": ("normals",),
    }
    assert mapping.how == "--outputs"
    # A trailing part of a path is enough when it names one leaf; task aliases work on the left.
    assert map_outputs(raw, TASKS, B, ["seg=scale_1.semseg", "depth=depth", "sn=normals"]).paths["segmentation"] == (
        "deep_supervision",
        "scale_1",
        "semseg",
    )


def test_outputs_as_a_mapping_and_partial_entries() -> None:
    raw = {"final": {"a": _map(13), "b": _map(1)}, "normal": _map(3)}
    mapping = map_outputs(raw, TASKS, B, {"segmentation": "final.a", "depth": "b"})
    assert mapping.paths == {"segmentation": ("final", "a"), "depth": ("final", "b"), "normal": ("normal",)}
    assert mapping.how == "--outputs+names"
    tuple_raw = (_map(3), [_map(13), _map(1)])
    assert map_outputs(tuple_raw, TASKS, B, ["seg=1.0", "depth=1.1", "normal=0"]).paths == {
        "segmentation": (1, 0),
        "depth": (1, 1),
        "normal": (0,),
    }


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["seg=semseg", "depth"], "--outputs mixes TASK=PATH entries with the positional name 'depth'; use one form"),
        (["albedo=semseg"], "--outputs names 'albedo', which is not a task of this dataset"),
        (["seg=semseg", "segmentation=depth"], "--outputs names task 'segmentation' twice"),
        (["depth="], "--outputs depth= names no output; write depth=KEY or depth=a.b.c"),
        (["depth=dpth"], "--outputs depth='dpth' matches no model output (outputs: deep_supervision.scale_0.semseg:"),
        (["depth=scale_0"], "--outputs depth='scale_0' matches no model output"),
        (
            ["segmentation=semseg", "depth=semseg"],
            "--outputs gives output semseg to tasks 'segmentation' and 'depth'; give each task its own output",
        ),
    ],
)
def test_outputs_entries_errors(names: list[str], message: str) -> None:
    assert message in _error(_mti_net(), TASKS, names=names)


def test_outputs_entry_matching_several_leaves_is_refused() -> None:
    raw = _mti_net()
    del raw["depth"]
    message = _error(raw, TASKS, names=["segmentation=semseg", "depth=depth", "normal=normals"])
    assert message.startswith("--outputs depth='depth' matches 4 outputs at the same depth (deep_supervision.scale_0")
    assert message.endswith("give a longer dotted path that names one of them")
