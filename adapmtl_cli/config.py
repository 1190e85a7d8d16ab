"""pydantic models for every file we read or write; each carries a ``schema_version``.

Defaults live here and only here; the CLI passes through what the user typed.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapmtl_cli.errors import ConfigError

SCHEMA_VERSION = 1
"""The version of every file model this build writes, and the newest it reads."""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _readable_version(cls, v: int) -> int:
        """Refuse a file written by a newer adapmtl: its fields may mean something this build does not know."""
        if v > SCHEMA_VERSION:
            raise ValueError(
                f"written by a newer adapmtl (schema_version {v}; this build reads up to {SCHEMA_VERSION}); "
                "upgrade adapmtl to read it"
            )
        if v < 1:
            raise ValueError(f"schema_version {v} is not a version adapmtl ever wrote (they start at 1)")
        return v


class FileIdentity(_File):
    """A file's size and sha256, recorded to tell later whether a path still names the same file."""

    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PruneConfig(_File):
    """Everything that defines a pruning run (the resolved ``prune`` command line)."""

    checkpoint: str
    factory: str | None = None
    trust_pickle: bool = False
    data: str = "synthetic"
    data_dir: str
    data_options: dict[str, str] = Field(default_factory=dict)
    """The dataset adapter's options (``--data-opt KEY=VALUE``, ``--layout``, ``--augment``)."""
    tasks: list[str] | None = None
    outputs: list[str] | None = None
    method: Literal[
        "adapmtl",
        "adapmtl_paper",
        "disparse",
        "disparse_dynamic",
        "gmp",
        "imp",
        "lth",
        "magnitude_oneshot",
        "snip",
        "str_global",
        "str_layer",
        "tp_magnitude",
        "tp_taylor",
        "uniform_magnitude",
    ] = "adapmtl"
    sparsity: float = Field(0.9, gt=0.0, lt=1.0, allow_inf_nan=False)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0.0, allow_inf_nan=False)
    threshold_lr: float = Field(0.002, gt=0.0, allow_inf_nan=False)
    weighting: Literal["adaptive", "paper", "equal", "norm"] | None = None
    """None: the method's default (norm for adapmtl, paper for adapmtl_paper, equal for the baselines)."""
    ramp_end: float = Field(0.75, gt=0.0, le=1.0)
    layer_scale: Literal["saliency", "none"] | None = None
    """Per-layer threshold scales of threshold methods (None: the method's own; saliency for adapmtl)."""
    allocation: Literal["adam", "marginal", "frozen"] | None = None
    """How threshold methods move the split between components (None: the method's own; adam)."""
    settle: Literal["mask", "thresholds"] | None = None
    """What threshold methods do once the ramp reaches the target: ``mask`` fixes the kept weights and fine-tunes
    them, ``thresholds`` keeps the soft thresholds moving (None: the method's own; mask for adapmtl, thresholds for
    str_global, str_layer and adapmtl_paper)."""
    structure: Literal["weight", "channel"] | None = None
    """What is pruned: single weights or whole output channels (None: the method's own; weight but for
    tp_magnitude and tp_taylor). A channel run's ``sparsity`` is the fraction of channels (or FLOPs,
    ``target``) removed."""
    target: Literal["channels", "flops"] | None = None
    """What a channel run's ``sparsity`` counts (None: channels); weight runs leave it unset."""
    component_sparsity: dict[str, tuple[float, float]] = Field(default_factory=dict)
    """``--component-sparsity NAME=MIN:MAX``: floors and caps of components' final sparsity (adapmtl only)."""
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype of the forward/backward; thresholds and sparsity arithmetic stay fp32. auto: bf16 on CUDA."""
    out: str
    exclude: list[str] = Field(default_factory=list)
    backbone: list[str] = Field(default_factory=list)
    head: list[str] = Field(default_factory=list)
    save_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    eval_batches: int | None = Field(None, ge=1)
    eval_split: Literal["val", "test"] = "val"
    """The split the dense and the pruned model are evaluated on: ``val`` (tune on it) or ``test`` (held out)."""
    num_workers: int = Field(0, ge=0)
    typed_paths: dict[str, str] = Field(default_factory=dict)
    """The paths as typed (``checkpoint``, ``data_dir``, ``factory``, ``data``) where they differ from the fields,
    which a run's ``config.json`` stores resolved (absolute), so the run folder works from any directory."""
    checkpoint_identity: FileIdentity | None = None
    """Size and sha256 of the checkpoint when the run started; ``resume`` and ``export`` check it is the same file."""

    def shown(self, name: str) -> str:
        """The path field ``name`` as the user typed it (for display); the stored value when not recorded."""
        return self.typed_paths.get(name, str(getattr(self, name)))

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v


class _Defaults:
    """``DEFAULTS.sparsity`` etc.: the ``PruneConfig`` defaults, read from the model (their only owner)."""

    def __getattr__(self, name: str) -> Any:
        field = PruneConfig.model_fields.get(name)
        if field is None or field.is_required():
            raise AttributeError(f"PruneConfig has no default for {name!r}")
        return field.get_default(call_default_factory=True)


DEFAULTS = _Defaults()
"""Every ``prune`` default, as the CLI shows it and the library uses it."""


def choices(name: str, model: type[BaseModel] = PruneConfig) -> tuple[str, ...]:
    """The values the ``Literal`` field ``name`` of ``model`` accepts, in declared order (None left out).

    The CLI lists ``--method``, ``--weighting`` and the other named choices from here, so they are written once.

    Raises:
        AttributeError: ``name`` is not a field with a ``Literal`` of choices.
    """
    field = model.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    for part in (annotation, *get_args(annotation)):
        if get_origin(part) is Literal:
            return get_args(part)
    raise AttributeError(f"{model.__name__}.{name} is not a field with named choices")


class ComponentEntry(_File):
    name: str
    kind: Literal["backbone", "head", "shared"]
    tasks: list[str]
    modules: list[str]
    params: int
    prunable_params: int


class LayerEntry(_File):
    name: str
    component: str
    type: str
    params: int


class ComponentsManifest(_File):
    """``components.json``: what discovery found (also what ``inspect --json`` prints)."""

    tasks: list[str]
    outputs: dict[str, str]
    output_paths: dict[str, list[str | int]]
    output_mapping: str
    components: list[ComponentEntry]
    layers: list[LayerEntry]
    unreached: list[str]
    excluded: list[str]
    prunable_params: int
    total_params: int
    input_shape: list[int]


class ComponentSparsity(_File):
    name: str
    kind: str
    tasks: list[str]
    params: int
    zeros: int
    sparsity: float
    threshold: float | None


class LayerSparsity(_File):
    name: str
    component: str
    params: int
    zeros: int
    sparsity: float
    threshold: float | None = None


class TaskMetrics(_File):
    dense: dict[str, float]
    pruned: dict[str, float]
    higher_is_better: dict[str, bool]


class DeltaTEntry(_File):
    per_task: dict[str, float]
    overall: float
    convention: str
    skipped: list[str] = Field(default_factory=list)


class ScoreEntry(_File):
    """One more relative score next to Δ_T (Δm, Δ_p), with the convention it follows."""

    overall: float
    per_task: dict[str, float] = Field(default_factory=dict)
    higher_is_better: bool
    convention: str


class ComponentChannels(_File):
    """One component's channels in a ``--structure channel`` run, and its parameters before/after removal."""

    channels: int
    removed: int
    params_before: int
    params_after: int


class ChannelReport(_File):
    """``report.json``'s ``channels`` entry of a ``--structure channel`` run."""

    target: Literal["channels", "flops"]
    """What ``target_sparsity`` counted: the fraction of prunable channels, or of the conv/linear FLOPs."""
    achieved: float
    """The removed fraction in that unit."""
    components: dict[str, ComponentChannels]
    params_before: int
    params_after: int
    flops_before: int
    """Multiply-accumulates of one sample's forward (Torch-Pruning's counter) before removal, and after."""
    flops_after: int
    keep: dict[str, list[int]]
    """Per channel group (its root layer), the kept channels: the plan ``export`` and ``load_pruned`` replay."""


class RunReport(_File):
    """``report.json``: the outcome of a run."""

    method: str
    weighting: str
    layer_scale: str | None = None
    """Threshold methods: ``saliency`` or ``none`` (``--layer-scale``); None for mask methods and older reports."""
    allocation: str | None = None
    """Threshold methods: how the split moved (``--allocation``); None for mask methods and older reports."""
    settle: str | None = None
    """Threshold methods: what they did at the target (``--settle``); None for mask methods and older reports."""
    target_sparsity: float
    overall_sparsity: float
    prunable_params: int
    zeros: int
    steps: int
    wall_seconds: float
    components: list[ComponentSparsity]
    layers: list[LayerSparsity]
    tasks: dict[str, TaskMetrics]
    delta_t: DeltaTEntry
    scores: dict[str, ScoreEntry] = Field(default_factory=dict)
    """Δm (``delta_m``) and Δ_p (``delta_p``); absent in reports written before they were added."""
    collapsed: dict[str, bool] = Field(default_factory=dict)
    """Per task: did the pruned model collapse (``tasks.scores.collapse``)? Empty in reports written before it.

    ``scores`` then also holds the bounded Δ_T (``delta_t_bounded``: each metric's change clipped to ±100 %)."""
    task_weights: dict[str, float]
    warnings: list[str] = Field(default_factory=list)
    structure: Literal["weight", "channel"] = "weight"
    """What was pruned (``--structure``); reports written before it are ``weight``."""
    channels: ChannelReport | None = None
    """Channel runs: channels, parameters and FLOPs before/after, per component; None for weight runs."""


class ShrinkManifest(_File):
    """The ``shrink`` entry of ``export/manifest.json``: channels ``--shrink`` removed, sizes, parity."""

    status: Literal["shrunk", "nothing removed", "not possible"]
    reason: str = ""
    removed_channels: dict[str, int] = Field(default_factory=dict)
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float
    onnx: str | None = None
    onnx_bytes: int | None = None
    onnx_max_abs_diff: float | None = None
    onnx_parity: dict[str, float] = Field(default_factory=dict)


LATENCY_BATCH = 8
"""Batch size ``export`` times every ONNX file at (``--latency-batch``), besides batch 1."""
LATENCY_THREADS = 1
"""onnxruntime intra-op threads of the latency sessions (``--latency-threads``); inter-op is always 1."""
LATENCY_REPEATS = 20
"""Timed runs per ONNX file and batch size; the median of them is recorded."""
LATENCY_WARMUP = 3
"""Untimed runs per ONNX file and batch size before the timed ones (allocations, kernel selection)."""


class LatencyAtBatch(_File):
    """Median onnxruntime latency at one batch size, in milliseconds: the dense reference and each file."""

    dense_ms: float = Field(gt=0, allow_inf_nan=False)
    files: dict[str, float] = Field(default_factory=dict)
    """File name in the export folder (``model.onnx``, ``model.shrunk.onnx``) -> median ms."""


class LatencyManifest(_File):
    """The ``latency`` entry of ``export/manifest.json``: onnxruntime CPU latency of each ONNX file vs dense.

    Shape: ``{"batch": B, "threads": N, "repeats": R, "warmup": W, "onnxruntime": "1.20.1", "dense_ms": x,
    "files": {"model.onnx": ms, "model.shrunk.onnx": ms}, "batch1": {"dense_ms": x, "files": {...}}}``. The
    top-level ``dense_ms`` and ``files`` are medians at batch ``B``; ``batch1`` holds the same at batch 1 (equal
    to the top level when ``B`` is 1). ``dense_ms`` is the run's original (unpruned) checkpoint, exported with
    the same exporter to a temporary file and timed in the same interleaved loop as the files
    (``export/latency.py``): each repetition runs every file once, so load on the machine hits all alike.
    """

    batch: int = Field(ge=1)
    threads: int = Field(ge=1)
    repeats: int = Field(ge=1)
    warmup: int = Field(ge=0)
    onnxruntime: str
    """The onnxruntime version that measured (CPUExecutionProvider, sequential execution)."""
    dense_ms: float = Field(gt=0, allow_inf_nan=False)
    files: dict[str, float] = Field(default_factory=dict)
    batch1: LatencyAtBatch
    input_shape: list[int] | None = None
    """One input (no batch) the files were timed at when it is not the run's (``--latency-input``): each model
    was then re-exported at that shape to a temporary folder and timed there; None: the files as written."""


class ChannelPlan(_File):
    """``export/channel_plan.json``: how to rebuild a channel run's smaller model from the user's own factory.

    ``adapmtl_cli.load_pruned`` builds the dense model, replays the plan (Torch-Pruning removes every channel
    not kept, with everything coupled to it) and loads ``model.channels.safetensors`` into the result.
    """

    keep: dict[str, list[int]]
    """Per channel group (its root layer's qualified name), the channels kept, in order."""
    input_shape: list[int]
    """One sample's input shape (the graph is traced on a batch of zeros of this shape)."""
    factory: str | None = None
    checkpoint: str
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int


class ChannelExport(_File):
    """The ``channels`` entry of ``export/manifest.json`` (channel runs): the physically smaller model's files."""

    plan: str
    weights: str
    weights_bytes: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float
    """Largest output difference of the smaller PyTorch model from the pruned (full-size) one."""
    onnx: str | None = None
    onnx_bytes: int | None = None
    onnx_max_abs_diff: float | None = None
    onnx_parity: dict[str, float] = Field(default_factory=dict)


class ExportManifest(_File):
    """``export/manifest.json``: what ``export`` wrote and how each file was verified."""

    dense: str
    dense_bytes: int
    sparse: str
    sparse_bytes: int
    sparse_roundtrip: Literal["bit-exact"]
    onnx: str | None = None
    onnx_bytes: int | None = None
    onnx_max_abs_diff: float | None = None
    onnx_batch_sizes: list[int] = Field(default_factory=list)
    # With a values dtype, "bit-exact" is against the weights rounded to it (export.sparse_tensor.cast_state).
    sparse_values_dtype: str | None = None
    onnx_exporter: str | None = None
    onnx_opset: int | None = None
    onnx_parity: dict[str, float] = Field(default_factory=dict)
    onnx_external_data: str | None = None
    onnx_sparse_initializers: int = 0
    zero_filters: dict[str, int] = Field(default_factory=dict)
    shrink: ShrinkManifest | None = None
    # Optional, absent in manifests written before it and with --no-latency: old files read unchanged, so (as
    # for RunReport's later fields) SCHEMA_VERSION stays; bumping it would make older builds refuse every file.
    latency: LatencyManifest | None = None
    """onnxruntime latency of the ONNX files against the dense model; None without ONNX files or measurement."""
    channels: ChannelExport | None = None
    """Channel runs (``--structure channel``): the smaller model's plan, weights and ONNX; None otherwise."""


def validation_message(exc: ValidationError) -> str:
    """All problems of a pydantic error on one line, options named as on the command line."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        flag = "--" + loc.replace("_", "-") if loc else "config"
        if err["type"] == "missing":
            parts.append(f"{flag}: required")
        else:
            parts.append(f"{flag}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def make_prune_config(**values: object) -> PruneConfig:
    """Validate CLI values into a ``PruneConfig``; every problem lands in one ``ConfigError`` line."""
    try:
        return PruneConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None
