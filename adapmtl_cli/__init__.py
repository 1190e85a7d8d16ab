"""adapmtl: compress an already-trained PyTorch multitask checkpoint with AdapMTL."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
