"""Global-batch loss normalisation: the objective of an optimizer step does not depend on how its samples are
split into micro-batches and ranks.

The objective of one optimizer step over its global batch G is

    L = w_lm * sum_G(token CE) / N_tokens + sum_{c in focal, dice, iou} w_c * sum_G(l_c) / N_masks
        + w_obj * sum_G(l_obj) / N_obj

(token-mean LM loss, per-sample mask losses averaged over the samples with masks, as released), where the N are
counted over the whole global batch. The denominators must be known before the first micro-batch's backward, so
the training stream is read one optimizer step ahead (`StepGrouper`): each micro-batch arrives as a `StepBatch`
carrying its rank's counts over the whole step, counted from the collated batches (`batch_counts`, checked
against the model's own counts after each forward); the module sums them over ranks in one all-reduce per step.
Each micro-batch then back-propagates its part of L, scaled by micro-batches x ranks because Lightning divides by
the accumulation and DDP averages over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from pixelqa.batch import Batch

IGNORE_INDEX = -100
COUNT_KEYS: tuple[str, ...] = ("lm_tokens", "mask_samples", "objectness_samples")
DATA_KEYS: tuple[str, ...] = ("redraws", "dropped_slots", "truncated_samples")
# which count normalises each summed loss term
DENOMINATOR: dict[str, str] = {
    "lm": "lm_tokens",
    "focal": "mask_samples",
    "dice": "mask_samples",
    "iou": "mask_samples",
    "objectness": "objectness_samples",
}


@dataclass
class StepBatch:
    """One micro-batch and what its optimizer step needs before the first backward: this rank's step counts."""

    batch: Batch
    index: int  # position of this micro-batch in its optimizer step
    per_step: int  # micro-batches per optimizer step
    counts: torch.Tensor  # (len(COUNT_KEYS) + len(DATA_KEYS),) float64: this rank's totals over the step

    @property
    def size(self) -> int:
        """Samples in the micro-batch."""
        return self.batch.size

    def to(self, device: torch.device) -> StepBatch:
        """The same on `device`."""
        return replace(self, batch=self.batch.to(device), counts=self.counts.to(device))


def batch_counts(batch: Batch) -> torch.Tensor:
    """(lm_tokens, mask_samples, objectness_samples, redraws, dropped_slots, truncated_samples) of a batch.

    The loss counts are what `UniPixel.forward` reports in released mask-loss mode: labelled next-token targets,
    and the samples with <|seg|> mask targets (each such sample contributes one averaged mask loss).
    """
    lm = int((batch.labels[:, 1:] != IGNORE_INDEX).sum()) if batch.labels is not None else 0
    masked = sum(1 for m in (batch.seg_masks or []) if m.shape[0] > 0)
    meta = batch.meta or []
    redraws = sum(int(m.get("redraws", 0)) for m in meta)
    dropped = sum(int(m.get("dropped_slots", 0)) for m in meta)
    truncated = sum(1 for m in meta if int(m.get("truncated_tokens", 0)) > 0)
    return torch.tensor([lm, masked, masked, redraws, dropped, truncated], dtype=torch.float64)


class StepGrouper:
    """Wraps an iterable of micro-batches: reads `per_step` at a time and yields them as `StepBatch`es."""

    def __init__(self, loader: Iterable[Any], per_step: int) -> None:
        if per_step < 1:
            raise ValueError(f"per_step: got {per_step}, expected >= 1")
        self.loader, self.per_step = loader, int(per_step)

    def __iter__(self) -> Iterator[StepBatch]:
        it = iter(self.loader)
        while True:
            step: list[Batch] = []
            for _ in range(self.per_step):
                try:
                    step.append(next(it))
                except StopIteration:
                    break
            if not step:
                return
            counts = torch.stack([batch_counts(b) for b in step]).sum(0)
            for i, b in enumerate(step):
                yield StepBatch(b, i, self.per_step, counts)


def global_objective(
    sums: dict[str, torch.Tensor], totals: torch.Tensor, weights: Any, keys: tuple[str, ...] = COUNT_KEYS
) -> torch.Tensor:
    """sum_c w_c * sums[c] / totals[c]: this micro-batch's part of the step objective (totals over the step)."""
    index = {k: i for i, k in enumerate(keys)}
    total = None
    for term, count in DENOMINATOR.items():
        part = float(getattr(weights, term)) * sums[term] / totals[index[count]].clamp(min=1).to(sums[term].dtype)
        total = part if total is None else total + part
    return total


def term_means(sums: dict[str, torch.Tensor], totals: torch.Tensor) -> dict[str, float]:
    """Each loss term summed over a step divided by its count (the per-term means that MLflow shows)."""
    index = {k: i for i, k in enumerate(COUNT_KEYS)}
    return {t: float(sums[t]) / max(float(totals[index[c]]), 1.0) for t, c in DENOMINATOR.items() if t in sums}


def loss_scale(per_step: int, world: int, strategy: str = "ddp") -> float:
    """What a micro-batch's part of the step objective is multiplied by before backward.

    Lightning divides every micro-batch loss by the accumulation and DDP / FSDP / ZeRO average gradients over
    ranks; DeepSpeed's engine divides by its gradient_accumulation_steps once more (Lightning sets it to the same
    accumulation), so under DeepSpeed the accumulation is multiplied back twice: the accumulation counts once.
    """
    scale = float(per_step) * float(world)
    if str(strategy).startswith("deepspeed"):
        scale *= float(per_step)
    return scale
