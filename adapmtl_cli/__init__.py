"""adapmtl: compress an already-trained PyTorch multitask model with AdapMTL, from the CLI or your own loop.

The public API (``adapmtl_cli.api``) is re-exported here; names resolve on first use, so ``import adapmtl_cli``
(and ``adapmtl --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from adapmtl_cli.api import (
        Discovery,
        Pruning,
        discover,
        load_pruned,
        load_sparse,
        measure_latency,
        prepare,
        save_sparse,
    )

_EXPORTS = (
    "Discovery",
    "Pruning",
    "discover",
    "load_pruned",
    "load_sparse",
    "measure_latency",
    "prepare",
    "save_sparse",
)

__all__ = [
    "Discovery",
    "Pruning",
    "__version__",
    "discover",
    "load_pruned",
    "load_sparse",
    "measure_latency",
    "prepare",
    "save_sparse",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("adapmtl_cli.api"), name)
