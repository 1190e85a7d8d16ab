"""The on-disk dataset layouts: their file names, folders and class lists, and which NYU-v2 layout a folder holds.

Readers (``nyuv2.py``, ``nyuv2_adashare.py``, ``taskonomy.py``) and generators (``synth/``) both take these from
here, so a folder a generator writes is the folder a reader expects, and neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.data.problems import quoted
from adapmtl_cli.errors import DataError

# --- NYU-v2 -----------------------------------------------------------------------------------------------

NYU13_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)  # fmt: skip
"""The 13 NYU-v2 classes in MTAN/LibMTL order; the index is the class id."""

NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
"""Gupta et al.'s 40 NYU-v2 classes; the index (their 1-based id minus 1) is the class id of the AdaShare layout."""

NYUV2_LAYOUTS = ("mtan", "adashare")
"""The two NYU-v2 layouts: MTAN/LibMTL ``.npy`` folders, and AdaShare's PNGs listed in a JSON index."""

MTAN_FOLDERS = ("image", "label", "depth", "normal")
"""The folders of each MTAN split (``root/{train,val}/{folder}/{i}.npy``): the input, then the targets."""
MTAN_TASK_FOLDERS = {"label": "segmentation", "depth": "depth", "normal": "normal"}
"""MTAN task folder -> task name, in the order tasks are reported."""

ADASHARE_JSON = "nyu_v2_3task.json"
ADASHARE_FOLDERS = ("img", "seg", "normal_mask", "depth")
"""The AdaShare layout's folders, in the order of each JSON entry."""

# --- the held-out test split of the JSON-indexed layouts ----------------------------------------------------

HELDOUT_KEY = "heldout"
"""The JSON list of our ``test`` split in ``nyu_v2_3task.json`` and ``taskonomy.json``.

Both indexes ship two lists, ``train`` and ``test``, and that ``test`` list is the original dataset's only
evaluation set, which we read as ``val`` (the split settings are tuned on). A held-out test split, looked at only
once settings are frozen, is a third list under this key (``adapmtl data synth --test N`` writes it); real
packs have none, so opening their ``test`` split is a ``DataError``."""

# --- Tiny-Taskonomy ---------------------------------------------------------------------------------------

TASKONOMY_JSON = "taskonomy.json"
"""Lists each split's samples, each a list of root-relative paths in :data:`TASKONOMY_FOLDERS` order."""
TASKONOMY_PRIOR = "semseg_prior_factor.npy"
"""The 17 class weights of the segmentation loss."""
TASKONOMY_FOLDERS = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
"""The modalities of one sample, in the order of each ``taskonomy.json`` entry."""
TASKONOMY_DOMAINS = {f: "segmentsemantic" if f == "segment_semantic" else f for f in TASKONOMY_FOLDERS}
"""Folder -> the ``domain_{d}`` part of its file names."""
TASKONOMY_CLASSES = ("background", *(f"class_{i}" for i in range(1, 17)))
"""Class ids 0..16 after decoding. Raw 2..17 are 16 COCO object classes whose exact subset we have not verified,
so they are named by their decoded id."""

# --- the AdaShare family's image encoding -------------------------------------------------------------------

INPUT_ENCODINGS = ("caffe-bgr", "rgb01")
"""How an 8-bit RGB image becomes the network input (the ``input`` option of the AdaShare-family layouts)."""
CAFFE_MEAN_BGR = (104.01, 116.67, 122.68)
"""Subtracted from the BGR 0..255 pixels by ``caffe-bgr``, as the AdaShare, DiSparse and AdapMTL checkpoints expect."""


def detect_layout(root: Path) -> str:
    """``"adashare"`` when ``root`` holds ``nyu_v2_3task.json``, ``"mtan"`` when it holds a split folder.

    The JSON wins when both are present. A root with a ``train/``, ``val/`` or ``test/`` folder counts as MTAN
    even when that folder is incomplete, so the MTAN checks can say what is missing.

    Raises:
        DataError: ``root`` does not exist, or matches neither layout (the message says what each needs).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset root {quoted(root)} does not exist; pass the folder that holds train/ and val/ (MTAN "
            f"layout) or {ADASHARE_JSON} (AdaShare layout)"
        )
    if (root / ADASHARE_JSON).is_file():
        return "adashare"
    if any((root / split).is_dir() for split in ("train", "val", "test")):
        return "mtan"
    found = [f"{name}/" for name in ADASHARE_FOLDERS if (root / name).is_dir()]
    hint = f" (it has {', '.join(found)} but no {ADASHARE_JSON})" if found else ""
    raise DataError(
        f"dataset root {quoted(root)} is in neither NYU-v2 layout{hint}: the MTAN layout needs train/ and val/ "
        f"(or test/) folders, each with image/, label/, depth/, normal/ holding 0.npy, 1.npy, ...; the AdaShare "
        f"layout needs {ADASHARE_JSON} listing img/, seg/, normal_mask/ and depth/ files"
    )
