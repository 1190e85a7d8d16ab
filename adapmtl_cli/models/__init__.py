"""Reference multitask models and their no-argument factories (``--factory adapmtl_cli.models:NAME``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from adapmtl_cli.models.aspp import ASPP_TINY_DEFAULTS, mobilenet_aspp_tiny
from adapmtl_cli.models.deeplab import (
    DeepLabResNetMTL,
    deeplab_resnet,
    deeplab_resnet34,
    deeplab_resnet_tiny,
)
from adapmtl_cli.models.heads import DEFAULT_TASKS, ASPPLiteHead
from adapmtl_cli.models.mobilenet import MobileNetV2MTL, mobilenet_v2, mobilenet_v2_tiny

MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplab_resnet": deeplab_resnet,
    "deeplab_resnet34": deeplab_resnet34,
    "deeplab_resnet_tiny": deeplab_resnet_tiny,
    "mobilenet_aspp_tiny": mobilenet_aspp_tiny,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_tiny": mobilenet_v2_tiny,
}

__all__ = [
    "ASPP_TINY_DEFAULTS",
    "DEFAULT_TASKS",
    "MODELS",
    "ASPPLiteHead",
    "DeepLabResNetMTL",
    "MobileNetV2MTL",
    "deeplab_resnet",
    "deeplab_resnet34",
    "deeplab_resnet_tiny",
    "mobilenet_aspp_tiny",
    "mobilenet_v2",
    "mobilenet_v2_tiny",
]
