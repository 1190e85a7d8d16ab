"""One quality-benchmark cell: a pruning row through the CLI's own ``run_prune``, or the dense fine-tune reference.

Every pruning row runs exactly what ``adapmtl prune`` runs (same loop, data order, evaluation), with the row's
options; the run folder is deleted once its report is read. ``dense+finetune`` fine-tunes the dense checkpoint
for the same budget (same optimizer, learning rate, batches, seed and the default's task weighting) without any
pruning: the reference for "what pruning costs" beyond what fine-tuning alone changes.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CONSTANT = "const:"
"""Row options ``const:MODULE.NAME=VALUE`` set a module constant of ``adapmtl_cli`` for the cell (dev sweeps of a
rule's built-in rate, for example); the value is part of the cell key like every option."""


@contextmanager
def constants(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Pop the ``const:`` options, set those constants for the block, restore them after (workers are reused)."""
    wanted = {k[len(CONSTANT) :]: options.pop(k) for k in list(options) if k.startswith(CONSTANT)}
    saved = []
    try:
        for path, value in wanted.items():
            module_name, _, name = path.rpartition(".")
            module = importlib.import_module(f"adapmtl_cli.{module_name}")
            if not hasattr(module, name):
                raise SystemExit(f"adapmtl_cli.{module_name} has no constant {name!r}")
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, type(getattr(module, name))(value))
        yield options
    finally:
        for module, name, old in reversed(saved):
            setattr(module, name, old)


def run(cell: Any, scenes: Path, dense: Path, out: Path) -> dict[str, Any]:
    """Run ``cell`` (a ``quality.Cell``) on ``scenes`` from the checkpoint in ``dense``; the result record."""
    with constants(dict(cell.options)) as options:
        return _run(cell, scenes, dense, out, options)


def _run(cell: Any, scenes: Path, dense: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    method = options.pop("method")
    common = dict(
        checkpoint=str(dense / "model.pt"),
        factory=f"adapmtl_cli.models:{cell.bench.factory}",
        data="synthetic",
        data_dir=str(scenes),
        sparsity=cell.sparsity,
        steps=cell.steps,
        lr=cell.lr,
        seed=cell.seed,
        device=cell.device,
        batch_size=cell.bench.batch_size,
        eval_split="val" if cell.split == "dev" else cell.split,  # the generator's val split is our dev
    )
    if method == "dense":
        return _dense_finetune(common, options)
    from adapmtl_cli.config import make_prune_config
    from adapmtl_cli.jobs.prune import run_prune

    cfg = make_prune_config(
        **common, method=method, out=str(out), save_every=cell.steps, log_every=max(1, cell.steps // 10), **options
    )
    try:
        report = run_prune(cfg, overwrite=out.exists())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    bounded = report.scores.get("delta_t_bounded")
    return {
        "delta_t": report.delta_t.overall,
        "delta_t_per_task": report.delta_t.per_task,
        "score_bounded": bounded.overall if bounded is not None else report.delta_t.overall,
        "collapsed": report.collapsed,
        "achieved_sparsity": report.overall_sparsity,
        "components": {c.name: c.sparsity for c in report.components},
        "tasks": {t: {"dense": m.dense, "pruned": m.pruned} for t, m in report.tasks.items()},
        "task_weights": report.task_weights,
    }


def _dense_finetune(common: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune without pruning for the same budget; scored against the dense checkpoint like every row."""
    from adapmtl_cli.config import DEFAULTS, make_prune_config
    from adapmtl_cli.jobs.prepare import prepare_from
    from adapmtl_cli.methods.registry import weighting_name
    from adapmtl_cli.methods.weighting import make_weighting
    from adapmtl_cli.tasks.scores import collapse, delta_t, delta_t_bounded
    from adapmtl_cli.train.batches import to_device, train_batches
    from adapmtl_cli.train.evaluate import evaluate_with_diagnostics
    from adapmtl_cli.train.loop import adam

    cfg = make_prune_config(**common, method=DEFAULTS.method, out="unused")
    prepared = prepare_from(cfg)
    model, tasks, device = prepared.loaded.model, prepared.tasks, torch.device(cfg.device)
    model.to(device)
    specs = {t.name: t for t in tasks}

    def score() -> Any:
        model.eval()
        result = evaluate_with_diagnostics(model, prepared.val, tasks, prepared.mapping, device, cfg.batch_size)
        model.train()
        return result

    dense = score().metrics
    torch.manual_seed(cfg.seed)
    weighting = make_weighting(
        options.get("weighting") or weighting_name(DEFAULTS.method, None), [t.name for t in tasks], cfg.steps
    )
    opt = adam([{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr, "weight_decay": 0.0}])
    batches = train_batches(prepared.train, cfg.batch_size, cfg.seed, 0)
    for step in range(1, cfg.steps + 1):
        x, y = to_device(next(batches), device)
        out = prepared.mapping.select(model(x))
        losses = {t.name: t.loss(out[t.name], y[t.name]) for t in tasks}
        weights = weighting.weights()
        loss = sum(weights[name] * value for name, value in losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        weighting.update(step - 1, {name: float(value.detach()) for name, value in losses.items()})
    evaluation = score()
    return {
        "delta_t": delta_t(dense, evaluation.metrics, specs).overall,
        "delta_t_per_task": delta_t(dense, evaluation.metrics, specs).per_task,
        "score_bounded": delta_t_bounded(dense, evaluation.metrics, specs).overall,
        "collapsed": collapse(dense, evaluation.metrics, specs, evaluation.diagnostics).per_task,
        "achieved_sparsity": 0.0,
        "components": {},
        "tasks": {t: {"dense": dense[t], "pruned": evaluation.metrics[t]} for t in dense},
        "task_weights": weighting.weights(),
    }
