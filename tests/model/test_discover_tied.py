"""Discovery of tied weights: the first holder is the layer, the others its aliases; counted once; exclusions."""

from __future__ import annotations

import pytest
import torch
from real_models import TiedHeads
from torch import nn

from adapmtl_cli.model.discover import discover_components, parameter_holders

TASKS = ("segmentation", "depth", "normal")


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))


def test_a_tied_weight_is_one_layer_with_an_alias() -> None:
    torch.manual_seed(0)
    model = TiedHeads()
    cmap = discover_components(model, model(_images()), TASKS)
    names = [layer.fqn for layer in cmap.layers]
    assert "heads.depth.0" in names and "heads.normal.0" not in names
    assert cmap.tied == {"heads.normal.0": "heads.depth.0"}
    # Both depth and normal reach the one tensor: it is theirs together, not the depth head's.
    assert cmap.component("shared:depth+normal").modules == ("heads.depth.0",)
    assert cmap.component("head:normal").modules == ("heads.normal.0", "heads.normal.2")
    # Counted once: prunable weights and component parameters both add up to the model's own count.
    assert cmap.prunable_params == sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "heads.normal.0"
    )
    assert sum(c.params for c in cmap.components) == sum(p.numel() for p in model.parameters())
    assert cmap.component("head:normal").params == 8 + 3 * 8 + 3  # normal.0's bias, normal.2's weight and bias


def test_untied_models_have_no_aliases(hard_shared: nn.Module, tiny_images: torch.Tensor) -> None:
    cmap = discover_components(hard_shared, hard_shared(tiny_images), TASKS)
    assert cmap.tied == {}
    assert sum(c.params for c in cmap.components) == sum(p.numel() for p in hard_shared.parameters())


@pytest.mark.parametrize("glob", ["heads.depth.0", "heads.normal.0"])
def test_excluding_either_holder_excludes_the_tensor(glob: str) -> None:
    torch.manual_seed(0)
    model = TiedHeads()
    cmap = discover_components(model, model(_images()), TASKS, exclude=[glob])
    names = {layer.fqn for layer in cmap.layers}
    assert not names & {"heads.depth.0", "heads.normal.0"}
    assert set(cmap.excluded) == {"heads.depth.0", "heads.normal.0"}
    assert cmap.tied == {}


class TiedToAnEmbedding(nn.Module):
    """A linear layer whose weight is also an embedding table (an LM-style tie): never pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.encoder = nn.Linear(12, 4)
        self.seg = nn.Linear(4, 6)
        self.seg.weight = self.embed.weight
        self.depth = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder(x.flatten(1)[:, :12]) + self.embed(torch.zeros(len(x), dtype=torch.long))
        return {"segmentation": self.seg(feat), "depth": self.depth(feat)}


def test_a_weight_tied_to_a_non_prunable_module_is_excluded() -> None:
    torch.manual_seed(0)
    model = TiedToAnEmbedding()
    cmap = discover_components(model, model(_images()), ("segmentation", "depth"))
    assert [layer.fqn for layer in cmap.layers] == ["encoder", "depth"]
    assert cmap.excluded == ("seg",) and cmap.tied == {}


def test_parameter_holders_lists_every_holder_in_module_order() -> None:
    model = TiedHeads()
    holders = parameter_holders(model)
    assert holders[id(model.heads["depth"][0].weight)] == [("heads.depth.0", "weight"), ("heads.normal.0", "weight")]
    assert holders[id(model.heads["normal"][0].bias)] == [("heads.normal.0", "bias")]
