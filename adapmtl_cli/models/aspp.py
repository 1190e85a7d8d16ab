"""Head-heavy reference model in the paper's regime: a small shared MobileNetV2 and wide ASPP task heads.

AdapMTL's NYU-v2 model (method.md §4) is a MobileNetV2 backbone with one ``ASPPHeadNode`` per task: four
parallel dilated 3x3 branches, each ``3x3 -> ReLU -> 1x1 -> ReLU -> 1x1 -> classes``, summed. Its heads hold
almost all the weights (backbone ≈1.4% of the prunable weights), which is where learned per-component
thresholds can show their worth: the split between a small shared backbone that every task pays for and large,
redundant heads. The two tiny reference models keep much more in the backbone (``deeplab_resnet_tiny`` 40.0%,
``mobilenet_v2_tiny`` 32.7% of their prunable weights) and cannot show that effect.

:func:`mobilenet_aspp_tiny` builds that shape at CPU scale from the existing blocks (``MobileNetV2MTL`` with
:class:`~adapmtl_cli.models.mobilenet.MobileNetV2Backbone` and :class:`~adapmtl_cli.models.heads.ASPPLiteHead`):
a MobileNetV2 at width 0.35 with one inverted-residual block per stage, output stride 8 (the later strides
become dilations) and a 64-channel shared map; heads 128 wide with dilations ``(1, 2, 3, 4)``, the paper's
``(6, 12, 18, 24)`` in ratio, scaled to the 9x12 map of a 72x96 input. Heads work at 1/8 resolution, so their
width is cheap. There is no dropout (the paper uses 0.5), so fine-tuning stays deterministic.

Measured with the default tasks (segmentation 13 classes, depth 1, normal 3), prunable (conv) weights from
``adapmtl_cli.api.discover`` on a 72x96 input:

- backbone 102,816 (8.6%); ``head:segmentation`` 367,104, ``head:depth`` 360,960, ``head:normal`` 361,984;
  1,192,864 prunable weights in all (1,200,164 parameters with biases and BatchNorm).
- one fine-tune step (forward, the three task losses at full resolution, backward, Adam over every parameter;
  no pruning wrapper) at batch 8, 72x96, with ``torch.set_num_threads(2)`` on this project's 2-core CPU
  machine (AMD EPYC), median of 10 steps after 3 warm-up steps: 0.22 s alone, 0.23-0.24 s in six rounds
  interleaved step by step with the tiny models (load average below 1); ``deeplab_resnet_tiny`` took
  0.11-0.12 s and ``mobilenet_v2_tiny`` 0.14-0.16 s in the same rounds. Other jobs on the two cores slow
  every model alike (at load average 5: 2.05 s for this one, 1.36 s for ``mobilenet_v2_tiny``), so compare
  models within one measurement.
"""

from __future__ import annotations

from typing import Any

from adapmtl_cli.models.mobilenet import MobileNetV2MTL

ASPP_TINY_DEFAULTS: dict[str, Any] = {
    "width_mult": 0.35,
    "depth_mult": 0.01,
    "last_channels": 64,
    "output_stride": 8,
    "head_width": 128,
    "head_dilations": (1, 2, 3, 4),
}
"""The knobs of :func:`mobilenet_aspp_tiny`; ``depth_mult`` 0.01 keeps one block per stage."""


def mobilenet_aspp_tiny(**overrides: Any) -> MobileNetV2MTL:
    """A ~1.2 M-weight head-heavy MobileNetV2 + ASPP model: backbone 8.6% of the prunable weights (see above).

    ``overrides`` are :class:`~adapmtl_cli.models.mobilenet.MobileNetV2MTL` arguments (``tasks``, widths, ...).
    """
    return MobileNetV2MTL(**{**ASPP_TINY_DEFAULTS, **overrides})


__all__ = ["ASPP_TINY_DEFAULTS", "mobilenet_aspp_tiny"]
