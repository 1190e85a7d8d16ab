"""The options of ``inspect`` and ``prune`` and their parsing into config values.

Every default and every list of choices shown here is read from ``PruneConfig`` (``DEFAULTS``, ``choices``) or
``SessionOptions`` (``SESSION_DEFAULTS``), their only owners; the help texts are built from them. The values
Typer fills in from these defaults are never passed on (``typed_options`` keeps only what the user typed), so
a ``--config`` file can set any of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from adapmtl_cli.config import DEFAULTS, choices
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.jobs.config_file import SESSION_DEFAULTS, SessionOptions

# --- parsing -----------------------------------------------------------------------------------------


def split_list(values: list[str] | None) -> list[str] | None:
    """Accept both ``--tasks a,b`` and ``--tasks a --tasks b``."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _typed(ctx: typer.Context, name: str) -> bool:
    # Typer vendors click, so compare the source by name rather than importing click's enum.
    return name in ctx.params and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


def typed_options(ctx: typer.Context) -> dict[str, Any]:
    """The options the user typed (not Typer's defaults) as config values, for ``--config`` to fill the rest."""
    out: dict[str, Any] = {}
    for name, value in ctx.params.items():
        if name in ("config", "print_config") or not _typed(ctx, name):
            continue
        if name in DEPRECATED:
            if not _typed(ctx, DEPRECATED[name]):  # the new spelling wins when both are typed
                out[DEPRECATED[name]] = value
            continue
        if name in ("tasks", "outputs"):
            value = split_list(value)
        elif name in ("data_opt", "layout", "augment"):
            continue
        elif name == "component_sparsity":
            value = parse_bounds(value)
        elif isinstance(value, Path):
            value = str(value)
        out[name] = value
    options = data_options(ctx)
    if options is not None:
        out["data_options"] = options
    return out


def deprecation_notes(ctx: typer.Context) -> list[str]:
    """One note per option typed under its old name, for the command to print as a warning."""
    return [
        f"--{old.replace('_', '-')} is deprecated; use --{new.replace('_', '-')} (the same value; {new} in --config)"
        for old, new in DEPRECATED.items()
        if _typed(ctx, old)
    ]


def parse_bounds(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """``["backbone=0.5:0.8"]`` -> ``{"backbone": (0.5, 0.8)}``; ``NAME=:0.8`` and ``NAME=0.5:`` leave a side open."""
    out: dict[str, tuple[float, float]] = {}
    for item in items or []:
        name, sep, span = item.partition("=")
        low, colon, high = span.partition(":")
        try:
            if not sep or not colon or not name.strip():
                raise ValueError
            out[name.strip()] = (float(low) if low.strip() else 0.0, float(high) if high.strip() else 1.0)
        except ValueError:
            raise ConfigError(
                f"--component-sparsity {item!r} must look like NAME=MIN:MAX, e.g. backbone=0.5:0.85 or 'head:seg=:0.9'"
            ) from None
    return out


def parse_data_opts(items: list[str] | None) -> dict[str, str]:
    """``["normals=adashare", ...]`` -> ``{"normals": "adashare"}``."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--data-opt {item!r} must look like KEY=VALUE, e.g. normals=adashare")
        options[key.strip()] = value.strip()
    return options


def data_options(ctx: typer.Context) -> dict[str, str] | None:
    """``--data-opt KEY=VALUE`` (repeatable) plus the ``--layout`` and ``--augment`` shorthands; None if unset."""
    if not any(_typed(ctx, n) for n in ("data_opt", "layout", "augment")):
        return None
    options = parse_data_opts(ctx.params.get("data_opt"))
    if _typed(ctx, "layout"):
        options["layout"] = ctx.params["layout"]
    if _typed(ctx, "augment"):
        options["augment"] = "true" if ctx.params["augment"] else "false"
    return options


# --- help texts from the config's own names ----------------------------------------------------------


def one_of(names: Sequence[str], notes: Mapping[str, str] | None = None) -> str:
    """``a (note), b or c``: the choices in their declared order, each with its note where it has one."""
    words = [f"{n} ({notes[n]})" if notes and n in notes else n for n in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# What each named choice means, keyed by the config's own names (a test checks that every key is one of them).
WEIGHTING_NOTES = {
    "adaptive": "loss growth relative to the dense level",
    "paper": "the paper's step-to-step estimator",
    "norm": "each loss over its dense level; default for adapmtl",
}
ALLOCATION_NOTES = {
    "adam": "Adam steps on the threshold logits at --threshold-lr; default for str_*",
    "marginal": "toward equal marginal loss per pruned weight; default for adapmtl",
    "frozen": "the start's split, held; the control",
}
LAYER_SCALE_NOTES = {
    "saliency": "each layer's threshold in its own units, from task gradients; keeps whole layers from being "
    "emptied; default for adapmtl",
    "none": "the paper's one raw threshold per component; default for the baselines",
}
PRECISION_NOTES = {"auto": "bf16 on CUDA, fp32 elsewhere"}
EVAL_SPLIT_NOTES = {
    "val": "the split to tune settings on",
    "test": "the held-out split, e.g. from `adapmtl data synth --test N`, for results with settings frozen",
}
LOG_FORMAT_NOTES = {"text": "live view", "jsonl": "one JSON object per line"}


def method_help() -> str:
    """``--method``'s help: the default method, then the registered baselines in registry order."""
    baselines = [m for m in choices("method") if m != DEFAULTS.method]
    return f"{DEFAULTS.method} (default), or a baseline: {', '.join(baselines)}."


# --- options of the model, the data and the component map (inspect and prune) -------------------------

CHECKPOINT = typer.Argument(
    None, help="Checkpoint: state_dict (.pt/.pth/.safetensors) or pickled module (or `checkpoint` in --config)."
)
FACTORY = typer.Option(
    None, "--factory", help="Builds the architecture: 'package.module:function' or 'path/file.py:function'."
)
TRUST = typer.Option(
    DEFAULTS.trust_pickle, "--trust-pickle", help="Allow a fully pickled nn.Module (runs code from the file)."
)
DATA = typer.Option(
    DEFAULTS.data,
    "--data",
    help="Dataset: synthetic, nyuv2 (MTAN .npy or AdaShare layout, detected), taskonomy, or your own plug-in "
    "as path/to/plugin.py or package.module.",
)
DATA_DIR = typer.Option(
    None,
    "--data-dir",
    help="Dataset folder (e.g. made by `adapmtl data synth`). Required: here or as data_dir in --config.",
)
LAYOUT = typer.Option(None, "--layout", help="On-disk layout when --data has several (nyuv2: auto, mtan, adashare).")
AUGMENT = typer.Option(
    None, "--augment/--no-augment", help="Random scale-crop and flip of the training split (never of val)."
)
DATA_OPT = typer.Option(
    None, "--data-opt", help="Dataset option KEY=VALUE (repeatable), e.g. normals=adashare; see README."
)
WORKERS = typer.Option(
    DEFAULTS.num_workers,
    "--num-workers",
    min=0,
    help="DataLoader worker processes (0: load in the main process); num_workers in --config.",
)
OLD_WORKERS = typer.Option(
    None, "--workers", min=0, hidden=True, help="Deprecated spelling of --num-workers (still accepted)."
)
DEPRECATED = {"workers": "num_workers"}
"""Options kept under an old name: the old parameter -> the config field it sets (``typed_options`` maps it)."""
TASKS = typer.Option(None, "--tasks", help="Tasks to keep, comma-separated (default: all of the dataset's).")
OUTPUTS = typer.Option(
    None,
    "--outputs",
    help=(
        "Which model output feeds each task: TASK=KEY or TASK=DOTTED.PATH per task "
        "(segmentation=semseg,depth=aux.depth; a trailing part of a path is enough), or one task name per "
        "positional output, in order, '_' skipping one (seg,_,depth,normal)."
    ),
)
EXCLUDE = typer.Option(None, "--exclude", help="Module glob never pruned (repeatable), e.g. 'backbone.stem*'.")
BACKBONE = typer.Option(None, "--backbone", help="Module glob forced into the backbone (repeatable).")
HEAD = typer.Option(None, "--head", help="TASK=GLOB forcing modules into a task's head (repeatable).")

# --- the run (prune) -----------------------------------------------------------------------------------

OUT = typer.Option(
    None,
    "--out",
    help="Run folder to write (config, metrics, state, report, weights). Required: here or as out in --config.",
)
SPARSITY = typer.Option(DEFAULTS.sparsity, "--sparsity", help="Target fraction of zero prunable weights, in (0, 1).")
STEPS = typer.Option(
    DEFAULTS.steps,
    "--steps",
    help=f"Fine-tuning steps (the sparsity ramps over the first {DEFAULTS.ramp_end:.0%}).",
)
BATCH_SIZE = typer.Option(
    DEFAULTS.batch_size, "--batch-size", help="Global batch per step (under torchrun, split evenly over the processes)."
)
LR = typer.Option(DEFAULTS.lr, "--lr", help="Adam learning rate of the weights.")
THRESHOLD_LR = typer.Option(
    DEFAULTS.threshold_lr, "--threshold-lr", help="Adam learning rate of the threshold logits (--allocation adam only)."
)
METHOD = typer.Option(DEFAULTS.method, "--method", help=method_help())
COMPONENT_SPARSITY = typer.Option(
    None,
    "--component-sparsity",
    help="Floor and cap of one component's final sparsity, NAME=MIN:MAX (repeatable; e.g. backbone=:0.85). "
    "The split of the rest stays learned; adapmtl only.",
)
WEIGHTING = typer.Option(
    DEFAULTS.weighting,
    "--weighting",
    help=f"Task-loss weights: {one_of(choices('weighting'), WEIGHTING_NOTES)} "
    "(default: norm for adapmtl, paper for adapmtl_paper, else equal).",
)
LAYER_SCALE = typer.Option(
    DEFAULTS.layer_scale,
    "--layer-scale",
    help=f"Per-layer threshold scales: {one_of(choices('layer_scale'), LAYER_SCALE_NOTES)}.",
)
ALLOCATION = typer.Option(
    DEFAULTS.allocation,
    "--allocation",
    help=f"How the split between components moves (threshold methods): "
    f"{one_of(choices('allocation'), ALLOCATION_NOTES)}.",
)
SETTLE_NOTES = {
    "mask": "fix the kept weights where the ramp ends and fine-tune them; default for adapmtl",
    "thresholds": "keep the soft thresholds moving to the last step; STR's and the paper's form",
}
SETTLE = typer.Option(
    DEFAULTS.settle,
    "--settle",
    help=f"What threshold methods do once the sparsity reaches the target: {one_of(choices('settle'), SETTLE_NOTES)}.",
)
STRUCTURE_NOTES = {
    "weight": "single weights: smaller files, not faster on common runtimes; the default",
    "channel": "whole output channels with everything coupled to them; export writes the physically smaller, "
    "faster model; --sparsity is then the fraction of channels removed",
}
TARGET_NOTES = {
    "channels": "the fraction of prunable channels removed; the default",
    "flops": "the fraction of the model's conv/linear FLOPs removed",
}
STRUCTURE = typer.Option(
    DEFAULTS.structure,
    "--structure",
    help=f"What is pruned: {one_of(choices('structure'), STRUCTURE_NOTES)} "
    "(channel: --method adapmtl, tp_magnitude or tp_taylor).",
)
TARGET = typer.Option(
    DEFAULTS.target,
    "--target",
    help=f"What --sparsity counts in a --structure channel run: {one_of(choices('target'), TARGET_NOTES)}.",
)
SEED = typer.Option(DEFAULTS.seed, "--seed")
DEVICE = typer.Option(DEFAULTS.device, "--device", help="auto, cpu, cuda, cuda:N or mps.")
PRECISION = typer.Option(
    DEFAULTS.precision,
    "--precision",
    help=f"Autocast dtype: {one_of(choices('precision'), PRECISION_NOTES)}; thresholds stay fp32.",
)
SAVE_EVERY = typer.Option(DEFAULTS.save_every, "--save-every", help="Save resumable state every N steps.")
LOG_EVERY = typer.Option(DEFAULTS.log_every, "--log-every", help="Measure sparsity and log metrics every N steps.")
EVAL_BATCHES = typer.Option(
    DEFAULTS.eval_batches, "--eval-batches", help="Evaluate on at most N batches (of --eval-split)."
)
EVAL_SPLIT = typer.Option(
    DEFAULTS.eval_split,
    "--eval-split",
    help=f"Split the dense and the pruned model are evaluated on: {one_of(choices('eval_split'), EVAL_SPLIT_NOTES)}.",
)

# --- one prune invocation (SessionOptions) ---------------------------------------------------------------

RESUME = typer.Option(
    SESSION_DEFAULTS.resume, "--resume", help="Continue the interrupted run in --out (its config wins)."
)
OVERWRITE = typer.Option(SESSION_DEFAULTS.overwrite, "--overwrite", help="Replace the run already in --out.")
QUIET = typer.Option(
    SESSION_DEFAULTS.quiet, "-q", "--quiet", help="No progress bar, no status lines and no report table."
)
LOG_FORMAT = typer.Option(
    SESSION_DEFAULTS.log_format,
    "--log-format",
    help=f"Progress as {one_of(choices('log_format', SessionOptions), LOG_FORMAT_NOTES)}.",
)
TENSORBOARD = typer.Option(
    SESSION_DEFAULTS.tensorboard, "--tensorboard", help="Also write the logged scalars to this TensorBoard folder."
)
CONFIG = typer.Option(None, "--config", help="TOML file with any of these options (options typed here win).")
PRINT_CONFIG = typer.Option(False, "--print-config", help="Print the resolved config as TOML and exit.")

# --- the planned run (inspect): unset means the config file's value or PruneConfig's default ---------------

PLANNED_METHOD = typer.Option(None, "--method", help=f"Method of the planned run (default {DEFAULTS.method}).")
PLANNED_LAYER_SCALE = typer.Option(
    None,
    "--layer-scale",
    help=f"Layer scales of the planned run: {one_of(choices('layer_scale'))} (default: the method's).",
)
PLANNED_BATCH_SIZE = typer.Option(
    None, "--batch-size", help=f"Batch size of the planned run (default {DEFAULTS.batch_size})."
)
PLANNED_STEPS = typer.Option(None, "--steps", help=f"Steps of the planned run (default {DEFAULTS.steps}).")
PLANNED_DEVICE = typer.Option(None, "--device", help="Device of the planned run: auto, cpu, cuda, mps.")
PLANNED_CONFIG = typer.Option(None, "--config", help="The planned run's TOML config (as for prune).")
ESTIMATE = typer.Option(
    True, "--estimate/--no-estimate", help="Time a few training steps of the planned run on one real batch."
)
AS_JSON = typer.Option(False, "--json", help="Print the component map as JSON (no estimate).")
