"""What the pre-training loops share: the optimizer and its schedule, the order samples are drawn in, a step."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch

# held-out samples are drawn from this index of the pretrain split on, far past any training pool
HELD_OUT_OFFSET = 10_000_000


def adamw_warmup_cosine(
    params: list[torch.nn.Parameter], lr: float, warmup: int, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at `lr` (no weight decay) and its schedule: linear warm-up over `warmup` steps, then a cosine decay to 0
    at `steps`."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


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
