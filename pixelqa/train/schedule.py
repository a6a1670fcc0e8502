"""Learning-rate schedule of every stage: linear warm-up over the first `warmup_ratio` of steps, then cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: ceil(ratio * total), at least 1 when the ratio is positive."""
    if total_steps < 1:
        raise ValueError(f"total_steps: got {total_steps}, expected >= 1")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"optim.warmup_ratio: got {warmup_ratio}, expected a value in [0, 1)")
    return max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step `step` (0-based): (step+1)/warmup during warm-up, then cosine to `min_ratio`."""
    warm = warmup_steps(total_steps, warmup_ratio)
    if step < warm:
        return (step + 1) / warm
    decay = max(1, total_steps - warm)
    progress = min(1.0, (step - warm) / decay)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    """A per-step LambdaLR applying `warmup_cosine` to every param group's base lr."""
    warmup_steps(total_steps, warmup_ratio)  # validate early, with the field name in the message
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_ratio))


def rebase_scheduler(scheduler: LambdaLR, base_lrs: list[float]) -> None:
    """Give a restored scheduler (and its optimizer) new base lrs, one per param group, and set every group's lr to
    the schedule's value at the step it stands at: what a run started with those base lrs would use there."""
    groups = scheduler.optimizer.param_groups
    if len(base_lrs) != len(groups):
        raise ValueError(f"base_lrs: got {len(base_lrs)} values, expected one per param group ({len(groups)})")
    scheduler.base_lrs = [float(lr) for lr in base_lrs]
    # the same product LambdaLR.get_lr forms, so an unchanged schedule gives bit-identical lrs
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, base, lr in zip(groups, scheduler.base_lrs, lrs, strict=True):
        group["initial_lr"] = base
        group["lr"] = lr
    scheduler._last_lr = list(lrs)  # what get_last_lr() reports until the next step
