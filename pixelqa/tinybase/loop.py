"""What the pre-training loops share: the learning-rate schedule and the order samples are drawn in."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine decay to 0 at `steps`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def batch_indices(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices into `n` items: each pass over them in a new seeded order."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n/batch_size: got {n}/{batch_size}, expected >= 1 each")
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += rng.sample(range(n), n)
        yield order[:batch_size]
        order = order[batch_size:]


def optimizer_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    clip: float = 1.0,
) -> None:
    """Backward, gradient-norm clipping at `clip`, one optimizer and one schedule step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
