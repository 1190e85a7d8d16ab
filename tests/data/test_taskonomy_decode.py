"""Tiny-Taskonomy decoding, function by function: raw pixels in, network inputs and task targets out."""

from __future__ import annotations

import math

import numpy as np

from adapmtl_cli.data.layouts import CAFFE_MEAN_BGR
from adapmtl_cli.data.taskonomy_decode import (
    DEPTH_INVALID_RAW,
    EDGES_CLIP,
    decode_clipped,
    decode_depth,
    decode_normal,
    decode_segmentation,
    encode_input,
)


def test_input_encodings() -> None:
    rgb = np.array([[[10, 20, 30]]], dtype=np.uint8)
    caffe = encode_input(rgb)
    assert caffe.dtype == np.float32
    assert np.allclose(caffe[0, 0], np.array([30, 20, 10]) - np.array(CAFFE_MEAN_BGR))
    assert np.allclose(encode_input(rgb, "rgb01")[0, 0], np.array([10, 20, 30]) / 255)


def test_segmentation_shifts_ids_and_places_uncertain_pixels() -> None:
    raw = np.array([[0, 1, 2, 17]], dtype=np.uint8)
    assert decode_segmentation(raw).tolist() == [[0, 0, 1, 16]]
    assert decode_segmentation(raw, "ignore").tolist() == [[-1, 0, 1, 16]]


def test_depth_is_log_scaled_with_invalid_zero() -> None:
    raw = np.array([[0, 511, DEPTH_INVALID_RAW - 1, DEPTH_INVALID_RAW, 65535]], dtype=np.uint16)
    depth = decode_depth(raw)
    assert depth.dtype == np.float32
    assert np.allclose(depth[0, :3], np.log1p(raw[0, :3].astype(np.float64)) / math.log(65536))
    assert depth[0, 3] == depth[0, 4] == 0


def test_normal_is_zero_where_depth_is_invalid_or_the_vector_is_short() -> None:
    rgb = np.array([[[255, 127, 127], [127, 127, 127], [255, 127, 127]]], dtype=np.uint8)
    depth = np.array([[512, 512, DEPTH_INVALID_RAW]], dtype=np.uint16)
    normal = decode_normal(rgb, depth)
    assert np.allclose(normal[0, 0], [1.0, -1 / 255, -1 / 255], atol=1e-6)
    assert not normal[0, 1].any() and not normal[0, 2].any()
    assert decode_normal(rgb)[0, 2].any()  # without depth only the length decides


def test_clipped_maps_span_minus_one_to_one() -> None:
    raw = np.array([[0, round(EDGES_CLIP * 65536 / 2), 65535]], dtype=np.uint16)
    assert np.allclose(decode_clipped(raw, EDGES_CLIP), [[-1.0, 0.0, 1.0]], atol=1e-3)
