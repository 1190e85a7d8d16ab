"""``adapmtl data synth``: one entry point over the scene generators, keyed by the on-disk layout they write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.data.synth.taskonomy import generate_taskonomy
from adapmtl_cli.data.synth.writing import SceneSummary

SYNTH_LAYOUTS = ("nyuv2", "nyuv2-adashare", "taskonomy")
"""The ``--layout`` values: MTAN/LibMTL NYU-v2, AdaShare-family NYU-v2, Tiny-Taskonomy."""


def generate(
    layout: str,
    root: Path,
    *,
    train: int,
    val: int,
    test: int = 0,
    size: tuple[int, int],
    seed: int,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> SceneSummary:
    """Render ``train`` + ``val`` (+ ``test``, the held-out split) scenes into ``root`` in ``layout``.

    ``layout`` is one of ``SYNTH_LAYOUTS``; ``test=0`` writes no test split. Where each layout keeps the test
    split: ``test/`` beside ``train/`` and ``val/`` (nyuv2), the ``heldout`` list of the JSON index
    (nyuv2-adashare, taskonomy; their ``test`` list is our val).
    """
    if layout == "taskonomy":
        return generate_taskonomy(
            root, train=train, val=val, test=test, size=size, seed=seed, overwrite=overwrite, on_progress=on_progress
        )
    if layout not in SYNTH_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    return generate_scenes(
        root,
        train=train,
        val=val,
        test=test,
        size=size,
        seed=seed,
        overwrite=overwrite,
        on_progress=on_progress,
        layout="adashare" if layout == "nyuv2-adashare" else "mtan",
    )
