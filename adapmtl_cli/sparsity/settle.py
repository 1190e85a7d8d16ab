"""What happens once the sparsity schedule reaches the target (``--settle``).

* ``thresholds`` — the soft thresholds go on moving to the end (STR's and the paper's form): the level controller
  re-fits the common offset after every step and the allocation rule moves the split.
* ``mask`` — at the step where the cubic ramp ends, the level lands exactly, each weight takes its thresholded
  value ``sign(w) * (|w| - t)`` as its raw value, every threshold drops to ``sigmoid(SETTLED_LOGIT)`` (about
  1e-26, so ``w - clamp(w, -t, t)`` is ``w`` itself) and the set of kept weights is fixed: the remaining steps
  fine-tune the survivors under a fixed mask, the pruned weights held at exactly zero after every optimizer step.

Why ``mask`` is the default's: at 95% a kept weight is barely above its threshold, so a move of the threshold by a
fraction of a percent changes the survivors' values by far more. Every step the controller re-fits the level as
the weights move and every survivor shifts with it; a depth head, a regression whose output scale follows those
values, swung by up to 50 Δ_T points within ten steps at the end of a run (docs/architecture.md, "Settling on a
fixed mask"). Freezing the thresholds without fixing the values makes it worse (the last step's exact landing
shifts them all at once); fixing the mask removes the shift, as DiSparse's dynamic variant does once its mask is
fixed.

The thresholds of the settling step stay in ``SettledMask.logits`` (the report shows them), the mask in
``SettledMask.keep``; both are buffers, saved with the model's state, so a resumed run holds the same mask.
"""

from __future__ import annotations

import torch
from torch import nn

from adapmtl_cli.sparsity.thresholds import ThresholdedModel

SETTLES = ("mask", "thresholds")
SETTLED_LOGIT = -60.0
"""The threshold logit of every group once settled: ``sigmoid(-60)`` ≈ 9e-27, below any weight worth keeping."""


class SettledMask(nn.Module):
    """The fixed-mask phase's state: whether it began, the thresholds it began with, and which weights it keeps."""

    done: torch.Tensor
    logits: torch.Tensor
    keep: torch.Tensor

    def __init__(self, tm: ThresholdedModel) -> None:
        super().__init__()
        total = sum(tm.raw_weight(f).numel() for f in tm.groups)
        self.register_buffer("done", torch.zeros((), dtype=torch.bool))
        self.register_buffer("logits", torch.zeros(len(tm.bank.groups), dtype=torch.float64))
        self.register_buffer("keep", torch.zeros(total, dtype=torch.bool))
        self._known: tuple[bool, float] | None = None
        """(done, sparsity) read back from the buffers once: after settling both are fixed, and reading them every
        step would wait on the device (a CUDA sync per step). Cleared when the buffers change (settle_, a load)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args) -> None:  # type: ignore[no-untyped-def]
        # A state saved before there was a fixed-mask phase has none of these: the run settles when it next can.
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)
        self._known = None
        if all(prefix + name not in state_dict for name in ("done", "logits", "keep")):
            missing_keys[:] = [k for k in missing_keys if not k.startswith(prefix)]

    @torch.no_grad()
    def settle_(self, tm: ThresholdedModel) -> None:
        """Fix the mask where the thresholds are now: survivors take their thresholded values, thresholds ~0."""
        self.logits.copy_(torch.stack([tm.bank.logit(g).detach().double() for g in tm.bank.groups]))
        offset = 0
        for fqn in tm.groups:
            w = tm.raw_weight(fqn)
            value = tm.soft_threshold(fqn)(w.detach())  # w - clamp(w, -t, t): exact zeros where pruned
            w.copy_(value)
            self.keep[offset : offset + w.numel()].copy_((value != 0).flatten().to(self.keep.device))
            offset += w.numel()
        for g in tm.bank.groups:
            tm.bank.logit(g).fill_(SETTLED_LOGIT)
        self.done.fill_(True)
        self._known = None

    def _read(self) -> tuple[bool, float]:
        if self._known is None:
            self._known = (bool(self.done), 1.0 - float(self.keep.sum()) / max(1, self.keep.numel()))
        return self._known

    def is_done(self) -> bool:
        """Whether the mask is fixed (read from the device once, not every step)."""
        return self._read()[0]

    @torch.no_grad()
    def hold_(self, tm: ThresholdedModel) -> float:
        """Zero the pruned weights again (an optimizer's momentum moves them); the overall sparsity."""
        offset = 0
        for fqn in tm.groups:
            w = tm.raw_weight(fqn)
            keep = self.keep[offset : offset + w.numel()].view_as(w).to(w.device)
            w.mul_(keep)
            offset += w.numel()
        return self._read()[1]

    def thresholds(self, tm: ThresholdedModel) -> dict[str, float]:
        """Per group, the threshold the mask was fixed with."""
        return {g: float(torch.sigmoid(v)) for g, v in zip(tm.bank.groups, self.logits, strict=True)}


__all__ = ["SETTLED_LOGIT", "SETTLES", "SettledMask"]
