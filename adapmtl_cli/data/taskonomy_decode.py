"""Decoding Tiny-Taskonomy's raw pixels into network inputs and task targets (pure numpy).

The formulas, and why, are in the module docstring of ``adapmtl_cli.data.taskonomy``.
"""

from __future__ import annotations

import math

import numpy as np

from adapmtl_cli.data.layouts import CAFFE_MEAN_BGR

UNCERTAIN = ("background", "ignore")
"""What raw segment_semantic 0 (uncertain) becomes: background (as AdaShare does) or -1 = ignore."""
DEPTH_INVALID_RAW = 64500
"""depth_zbuffer values from here up mark pixels without depth."""
KEYPOINTS_CLIP = 0.005
EDGES_CLIP = 0.08


def encode_input(rgb: np.ndarray, mode: str = "caffe-bgr") -> np.ndarray:
    """The network input (H, W, 3) float32 from an (H, W, 3) uint8 RGB image, for ``mode`` in ``INPUT_ENCODINGS``."""
    if mode == "caffe-bgr":
        return rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    return rgb.astype(np.float32) / np.float32(255.0)


def decode_segmentation(raw: np.ndarray, uncertain: str = "background") -> np.ndarray:
    """Class ids (H, W) int64 0..16 from raw ids 0..17; raw 0 becomes 0 (background) or -1 (``ignore``)."""
    labels = raw.astype(np.int64) - 1
    labels[raw == 0] = 0 if uncertain == "background" else -1
    return labels


def decode_depth(raw: np.ndarray) -> np.ndarray:
    """``log(1 + raw) / log(65536)`` (H, W) float32, 0 where ``raw >= 64500`` (invalid)."""
    scaled = np.log1p(raw.astype(np.float64)) / math.log(65536.0)
    return np.where(raw < DEPTH_INVALID_RAW, scaled, 0.0).astype(np.float32)


def decode_normal(rgb: np.ndarray, depth_raw: np.ndarray | None = None) -> np.ndarray:
    """``rgb / 255 * 2 - 1`` (H, W, 3) float32; zero where the depth is invalid or the vector is shorter than 0.5."""
    normal = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0
    invalid = np.linalg.norm(normal, axis=-1) < 0.5
    if depth_raw is not None:
        invalid |= depth_raw >= DEPTH_INVALID_RAW
    normal[invalid] = 0.0
    return normal.astype(np.float32)


def decode_clipped(raw: np.ndarray, clip: float) -> np.ndarray:
    """``raw / 65536`` clipped to ``[0, clip]`` and rescaled to [-1, 1], float32 (keypoints2d, edge_texture)."""
    value = np.clip(raw.astype(np.float64) / 65536.0, 0.0, clip)
    return (value / clip * 2.0 - 1.0).astype(np.float32)
