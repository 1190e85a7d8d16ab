"""``adapmtl data synth`` and ``data check``: generate a dataset folder, and validate and summarise one."""

from __future__ import annotations

from pathlib import Path

import typer

from adapmtl_cli.cli import options as o

SYNTH_EPILOG = (
    "Examples: adapmtl data synth ./scenes --train 256 --val 64 --test 64 --size 96,128 --seed 0  |  "
    "adapmtl data synth ./nyu40 --layout nyuv2-adashare  |  adapmtl data synth ./tiny-taskonomy --layout taskonomy"
)
CHECK_EPILOG = "Examples: adapmtl data check ./scenes  |  adapmtl data check ./nyu --data nyuv2 --layout adashare"
# --data defaults to what prune and inspect default to (DEFAULTS.data), so a folder checked without --data is
# read by `prune` exactly as `data check` read it.


def data_synth(
    root: Path = typer.Argument(..., help="Folder to write."),
    layout: str = typer.Option(
        "nyuv2",
        "--layout",
        help="On-disk format: nyuv2 (MTAN/LibMTL .npy, 13 classes), nyuv2-adashare (AdaShare/DiSparse/AdapMTL "
        "PNG + JSON, 40 classes) or taskonomy (Tiny-Taskonomy, 5 tasks).",
    ),
    train: int = typer.Option(256, "--train", min=1, help="Training samples."),
    val: int = typer.Option(64, "--val", min=1, help="Validation samples (tune settings on these)."),
    test: int = typer.Option(
        0,
        "--test",
        min=0,
        help="Held-out test samples (0: no test split), disjoint from train and val, which stay as without it; "
        "in test/ (nyuv2) or the JSON's 'heldout' list (nyuv2-adashare, taskonomy). Evaluate on them with "
        "prune --eval-split test.",
    ),
    size: str | None = typer.Option(None, "--size", help="Image height,width (default 96,128; taskonomy 256,256)."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier generated folder."),
) -> None:
    """Generate NYU-v2-like indoor scenes (image, labels, depth, normals; for Taskonomy also keypoints and edges)
    in the exact on-disk format of a real dataset, with no download."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.data.synth.generate import SYNTH_LAYOUTS, generate
    from adapmtl_cli.errors import ConfigError

    if layout not in SYNTH_LAYOUTS:
        raise ConfigError(f"--layout {layout!r} is not one of: {', '.join(SYNTH_LAYOUTS)}")
    text = size or ("256,256" if layout == "taskonomy" else "96,128")
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--size {text!r} must be HEIGHT,WIDTH, e.g. 96,128") from None
    if h < 16 or w < 16:
        raise ConfigError(f"--size {text!r} is too small; use at least 16,16")
    with ui.spinner(f"rendering {train + val + test} scenes ({layout})"):
        summary = generate(layout, root, train=train, val=val, test=test, size=(h, w), seed=seed, overwrite=overwrite)
    held_out = f" + {summary.test} test" if summary.test else ""
    ui.success(
        f"wrote {summary.train} train + {summary.val} val{held_out} scenes of {h}x{w} to {root} in the {layout} layout "
        f"({summary.seconds:.1f} s); check it with: adapmtl data check {root}"
        + {"taskonomy": " --data taskonomy", "nyuv2-adashare": " --data nyuv2"}.get(layout, "")
    )


def data_check(
    ctx: typer.Context,
    root: Path = typer.Argument(..., help="Dataset folder."),
    data: str = o.DATA,
    layout: str | None = o.LAYOUT,
    data_opt: list[str] | None = o.DATA_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate a dataset folder with the checks `prune` runs, and summarise it: samples, image size, tasks,
    class histogram, invalid-depth ratio."""
    import json

    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_data_plugin, check_dataset_root, plugin_reference

    del layout, data_opt  # read through ctx, exactly as prune and inspect read them
    check_data_plugin(data)  # before torch loads
    if not plugin_reference(data):
        check_dataset_root(root, "")
    from adapmtl_cli.data import get_dataset
    from adapmtl_cli.report.terminal import dataset_renderable

    desc = get_dataset(data, o.data_options(ctx) or {}).describe(root)
    if as_json:
        ui.plain(json.dumps(desc, indent=2))
    else:
        ui.show(dataset_renderable(desc))
        ui.success(f"{root} is a valid dataset folder")
