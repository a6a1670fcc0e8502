"""Stop a run whose loss or gradient is no longer a number, and refuse stored weights that hold NaN / inf.

One NaN in a step's objective or gradient reaches every trained weight through the optimizer's update, and from
there every checkpoint written after it, while the run goes on: NaN mask logits decode as empty masks, so the
scores read as a plain 0. So `UniPixelModule` checks each optimizer step before its update: the objective's terms
(kept on the device while the step's micro-batches run) and the total norm of the gradients, as one flag tensor that
reaches the host once per optimizer step (in every strategy: DeepSpeed's per-micro-batch calls are skipped). A step
that fails raises `NonFiniteStepError` on every rank alike (the objective is per rank: one small all-reduce of the
flags per step when there are several processes), so its update is never applied and no non-finite weight is
checkpointed; only then are the terms' values copied to the host, for the message.
Weights read from a checkpoint (`init_from=`, a Lightning `ckpt=`) are scanned once at load (`check_finite_weights`);
a DeepSpeed checkpoint folder's weights are loaded by the engine itself and not scanned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

WEIGHTS_SHOWN = 3  # tensors named in a refusal


class NonFiniteStepError(RuntimeError):
    """A training step whose objective or gradient norm is NaN / inf; the message names the step, the terms and the
    learning rates (`pixelqa.fit` prints it as one line and exits 1)."""


def nonfinite_tensors(state: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(name, values that are NaN or inf, values) of every floating-point tensor of `state` holding any, in order."""
    found = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                found.append((name, bad, value.numel()))
    return found


def check_finite_weights(state: Mapping[str, Any], what: str) -> None:
    """Refuse (a recipe error, exit 2) a checkpoint's state dict with NaN / inf in any weight; `what` names the file
    as the user gave it (`init_from=<path>`)."""
    bad = nonfinite_tensors(state)
    if not bad:
        return
    from pixelqa.train.datamodule import EveryRankError  # every rank loads the same file: rank 0 reports it

    tensors = sum(1 for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    shown = "; ".join(f"{name}: {n:,} of {total:,} values" for name, n, total in bad[:WEIGHTS_SHOWN])
    more = "; ..." if len(bad) > WEIGHTS_SHOWN else ""
    raise EveryRankError(
        f"{what}: {len(bad)} of {tensors} stored weight tensors hold NaN/inf ({shown}{more})"
        "; refused: they come from a run whose loss diverged. Give a checkpoint written before it diverged"
    )


def grad_total_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of all gradients together, on their device (None when no parameter holds a gradient here, e.g.
    DeepSpeed keeps them in its own buffers)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def step_flags(
    names: Sequence[str], values: Mapping[str, torch.Tensor | float], norm: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """(len(names) + 1,) float32 on `device` (for an all-reduce with the other ranks): 1 where the term `names[i]` is
    not finite (a term absent from `values` counts as finite), last 1 where the gradient norm is not. Built on the
    device from device tensors: no device-to-host copy."""
    terms = [_nonfinite(values.get(n, 0.0), device) for n in names]
    grad = torch.zeros((), dtype=torch.bool, device=device) if norm is None else _nonfinite(norm, device)
    return torch.stack([*terms, grad]).float()


def _nonfinite(value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """A () bool tensor on `device`: whether `value` holds NaN / inf (tested in its own dtype)."""
    if isinstance(value, torch.Tensor):
        return (~torch.isfinite(value.detach())).any().to(device)
    # a fill, not a copy from host memory: no wait for the device's queue
    return torch.full((), not math.isfinite(float(value)), dtype=torch.bool, device=device)


def _value(name: str, values: Mapping[str, float]) -> str:
    value = values.get(name)
    return f"is {value}" if value is not None and not math.isfinite(value) else "is not finite on another rank"


def stop_message(
    step: int,
    bad_terms: Sequence[str],
    values: Mapping[str, float],
    bad_grad: bool,
    lrs: Mapping[str, float],
    optim: Mapping[str, Any],
) -> str:
    """The one line a stopped run prints: the optimizer step (0-based: steps done before it), what is not finite,
    the learning rates in use and what to do."""
    named = [t for t in bad_terms if t != "loss"] or list(bad_terms)  # the weighted sum alone may overflow
    said = [f"train/{t} {_value(t, values)}" for t in named]
    if said:
        what = f"{', '.join(said)} (the step objective is not finite)"
    else:
        loss = values.get("loss")
        what = "the gradient norm is not finite"
        what += f" (the step objective {loss:.6g} is finite)" if loss is not None else ""
    if said and bad_grad:
        what += ", and so is the gradient norm"
    now = ", ".join(f"{name} {lr:g}" for name, lr in lrs.items())
    keys = ("lr", "decoder_lr", "backbone_lr")
    set_ = " ".join(f"optim.{k}={optim[k]}" for k in keys if optim.get(k) is not None)
    return (
        f"training stopped at optimizer step {step}: {what}; learning rates at this step: {now} ({set_}); the step's "
        "update was not applied, so no checkpoint holds its result: start again with lower learning rates (from a "
        "checkpoint written before it: ckpt=<its path> with lower optim.* learning rates, which a resume applies from "
        "its step on)"
    )
