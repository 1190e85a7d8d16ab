"""adapmtl: compress an already-trained PyTorch multitask checkpoint with AdapMTL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from adapmtl_cli.export.sparse_codec import load_sparse

__all__ = ["__version__", "load_sparse"]


def __getattr__(name: str) -> Any:
    # Re-exports resolved on first use, so `import adapmtl_cli` (and `adapmtl --help`) does not import torch.
    if name == "load_sparse":
        from adapmtl_cli.export.sparse_codec import load_sparse

        return load_sparse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
