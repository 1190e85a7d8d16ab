"""Scale-and-flip augmentation: exact hand-computed transforms, and draws fixed by (seed, epoch, index)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from adapmtl_cli.data.augment import SCALES, AugmentDraw, AugmentedSplit, augment_sample, draw_augment
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.train.loop import train_batches

KINDS = {"segmentation": "segmentation", "depth": "depth", "normal": "normal"}
H, W = 12, 20


def _sample(seed: int = 0, h: int = H, w: int = W) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.randn(3, h, w, generator=g), dim=0)
    normal[:, :, :3] = 0  # an invalid band on the left
    depth = torch.rand(1, h, w, generator=g) * 5 + 0.5
    depth[:, :2] = 0
    seg = torch.randint(-1, 13, (h, w), generator=g)
    return torch.rand(3, h, w, generator=g), {"segmentation": seg, "depth": depth, "normal": normal}


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def _identity(flip: bool = False) -> AugmentDraw:
    return AugmentDraw(scale=1.0, top=0, left=0, height=H, width=W, flip=flip)


def test_scale_one_without_flip_is_the_identity():
    sample = _sample()
    assert _same(augment_sample(sample, KINDS, _identity()), sample)


def test_flipping_twice_is_the_identity():
    sample = _sample()
    once = augment_sample(sample, KINDS, _identity(flip=True))
    assert not _same(once, sample)
    assert _same(augment_sample(once, KINDS, _identity(flip=True)), sample)


def test_flip_mirrors_every_map_and_negates_the_normal_x():
    image, targets = _sample()
    flipped_image, flipped = augment_sample((image, targets), KINDS, _identity(flip=True))
    assert torch.equal(flipped_image[:, :, 0], image[:, :, -1])
    assert torch.equal(flipped["segmentation"][:, 0], targets["segmentation"][:, -1])
    assert torch.equal(flipped["depth"][..., 0], targets["depth"][..., -1])
    assert torch.equal(flipped["normal"][0], -targets["normal"][0].flip(-1))
    assert torch.equal(flipped["normal"][1:], targets["normal"][1:].flip(-1))
    _, kept = augment_sample((image, targets), KINDS, _identity(flip=True), flip_normal_x=False)
    assert torch.equal(kept["normal"], targets["normal"].flip(-1))


@pytest.mark.parametrize("scale", [1.2, 1.5])
def test_depth_is_divided_by_the_scale(scale: float):
    image, targets = _sample()
    targets["depth"] = torch.full((1, H, W), 3.0)
    targets["depth"][:, :, :4] = 0  # invalid stays 0 wherever it lands
    d = AugmentDraw(scale, top=1, left=2, height=round(H / scale), width=round(W / scale), flip=False)
    depth = augment_sample((image, targets), KINDS, d)[1]["depth"]
    assert depth.shape == (1, H, W) and depth.dtype == torch.float32
    values = set(depth.unique().tolist())
    assert values == {0.0, float(torch.tensor(3.0) / scale)}


def test_crop_and_resize_by_hand():
    """A 2x2 window of a 4x4 sample at scale 2: nearest neighbour repeats each pixel as a 2x2 block."""
    seg = torch.arange(16).view(4, 4) - 1
    depth = (torch.arange(16, dtype=torch.float32).view(1, 4, 4) + 1) * 2
    normal = torch.zeros(3, 4, 4)
    normal[2] = 1.0  # facing the camera everywhere ...
    normal[:, 1, 2] = 0.0  # ... except one invalid pixel inside the window
    image = torch.arange(48, dtype=torch.float32).view(3, 4, 4)
    d = AugmentDraw(2.0, top=1, left=1, height=2, width=2, flip=False)
    out_image, out = augment_sample((image, {"segmentation": seg, "depth": depth, "normal": normal}), KINDS, d)
    assert out["segmentation"].tolist() == [[4, 4, 5, 5], [4, 4, 5, 5], [8, 8, 9, 9], [8, 8, 9, 9]]
    assert out["segmentation"].dtype == torch.int64
    assert out["depth"][0].tolist() == [[6.0, 6.0, 7.0, 7.0]] * 2 + [[10.0, 10.0, 11.0, 11.0]] * 2
    valid = out["normal"].ne(0).any(dim=0)
    assert valid.tolist() == [[True, True, False, False]] * 2 + [[True] * 4] * 2
    # bilinear mixing with the invalid zero shortens the vectors; renormalised they are exactly (0, 0, 1)
    assert torch.equal(out["normal"][2][valid], torch.ones(int(valid.sum())))
    # bilinear at pixel centres over the window [[5, 6], [9, 10]]: output 0 samples source -0.25 (clamped to 0),
    # output 1 samples 0.25, i.e. 0.75 * first + 0.25 * second along each axis
    assert out_image[0, 0, 0] == 5.0
    assert out_image[0, 1, 1] == 0.75 * (0.75 * 5 + 0.25 * 6) + 0.25 * (0.75 * 9 + 0.25 * 10)


def test_scaled_normals_are_unit_or_zero():
    image, targets = _sample(seed=3)
    d = AugmentDraw(1.5, top=3, left=1, height=8, width=13, flip=True)
    normal = augment_sample((image, targets), KINDS, d)[1]["normal"]
    length = normal.norm(dim=0)
    valid = length > 0
    assert torch.allclose(length[valid], torch.ones(int(valid.sum())), atol=1e-6)
    assert (~valid).any() and valid.any()


def test_draws_stay_in_bounds_and_cover_every_choice():
    seen = set()
    for index in range(200):
        d = draw_augment(np.random.default_rng([0, 0, index]), (H, W))
        assert d.scale in SCALES and (d.height, d.width) == (round(H / d.scale), round(W / d.scale))
        assert 0 <= d.top <= H - d.height and 0 <= d.left <= W - d.width
        seen.add((d.scale, d.flip))
    assert seen == set(itertools.product(SCALES, (False, True)))


class _Fixed(Dataset):
    def __init__(self, n: int = 6) -> None:
        self.samples = [_sample(seed=i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]


def test_same_seed_epoch_and_index_give_the_same_sample():
    a, b = AugmentedSplit(_Fixed(), KINDS), AugmentedSplit(_Fixed(), KINDS)
    a.set_epoch(3, seed=7)
    b.set_epoch(3, seed=7)
    assert all(_same(a[i], b[i]) for i in range(6))
    assert _same(a[-1], a[5])
    assert a.draw(2, (H, W)) == draw_augment(np.random.default_rng([7, 3, 2]), (H, W))
    draws = set()
    for epoch in range(4):
        b.set_epoch(epoch, seed=7)
        draws.add(b.draw(2, (H, W)))
    assert len(draws) > 1  # a new epoch redraws
    b.set_epoch(4, seed=8)
    assert any(not _same(a[i], b[i]) for i in range(6))
    with pytest.raises(IndexError):
        a[6]


def test_a_resumed_stream_sees_the_same_augmented_batches():
    data = AugmentedSplit(_Fixed(), KINDS)
    stream = list(itertools.islice(train_batches(data, 2, seed=1, start_step=0), 7))
    resumed = list(itertools.islice(train_batches(AugmentedSplit(_Fixed(), KINDS), 2, seed=1, start_step=4), 3))
    for (x, y), (x2, y2) in zip(stream[4:], resumed, strict=True):
        assert torch.equal(x, x2) and all(torch.equal(y[k], y2[k]) for k in y)


def test_unknown_task_kind_is_refused():
    with pytest.raises(ConfigError, match=r"cannot transform task kind\(s\) 'keypoints'; it knows segmentation"):
        AugmentedSplit(_Fixed(1), {"kp": "keypoints"})
