"""J&F for video object segmentation (DAVIS 2017 protocol), with ReVOS's robustness R and accuracy A."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from pixelqa.metrics.functional import as_mask_clip, count_true, jaccard_and_boundary_f

__all__ = ["JAndF", "davis_decay", "revos_robustness"]

# ReVOS evaluation: R = max(1 - false-positive area / (foreground area + 1e-6), 0), both areas summed over the clip
_ROBUSTNESS_EPS = 1e-6


def davis_decay(per_frame: Tensor) -> Tensor:
    """DAVIS decay of a (T,) per-frame score: mean of the first quarter of frames minus mean of the last quarter."""
    frames = per_frame.shape[0]
    # Same bin edges as the DAVIS toolkit: round(linspace(1, T, 5)) - 1, bins ids[i] .. ids[i + 1] inclusive.
    ids = (np.round(np.linspace(1, frames, 5) + 1e-10) - 1).astype(int)
    return per_frame[ids[0] : ids[1] + 1].mean() - per_frame[ids[3] : ids[4] + 1].mean()


def revos_robustness(preds: Tensor, target: Tensor, foreground: Tensor) -> Tensor:
    """ReVOS robustness of one clip, a 0-D tensor: max(1 - sum_t |preds & ~target| / (sum_t |foreground| + 1e-6), 0).

    The official definition (`pixelqa.metrics.protocols.revos_expression`): the areas are summed over the whole
    clip before the ratio, not a per-frame R averaged. ``foreground`` is the union of all annotated objects of the
    video in each frame; on a "blank" expression (no target object) the whole predicted area is false positive.
    """
    false_positive = count_true(preds & ~target).double().sum()
    area = count_true(foreground).double().sum()
    return (1 - false_positive / (area + _ROBUSTNESS_EPS)).clamp(min=0).float()


class JAndF(Metric):
    """Region J, boundary F and J&F over object sequences, the DAVIS 2017 way.

    Each ``update(preds, target)`` adds one object sequence: binary (T, H, W) (or (H, W)) masks. Per object the
    per-frame scores are averaged over frames (recall: fraction of frames > 0.5; decay: first-quarter minus
    last-quarter mean); ``compute()`` averages those over objects and returns a dict with ``J``, ``F``, ``J&F`` =
    (J + F) / 2, ``J-recall``, ``F-recall``, ``J-decay``, ``F-decay``. With ``robustness=True`` each update also
    takes ``foreground`` (the union of all annotated objects per frame) and the dict adds ReVOS's ``R`` and pixel
    accuracy ``A`` (each over the whole clip, as the official script, then averaged over objects). Frame selection
    (e.g. DAVIS semi-supervised drops the first and last frame) is the caller's protocol.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    _SUM_STATES = ("j", "f", "j_recall", "f_recall", "j_decay", "f_decay", "r", "a")

    def __init__(self, bound_th: float = 0.008, robustness: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if not (bound_th >= 0):
            raise ValueError(f"bound_th must be >= 0 (fraction of the diagonal if < 1, pixels if >= 1), got {bound_th}")
        self.bound_th = float(bound_th)
        self.robustness = robustness
        for name in self._SUM_STATES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_objects", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, foreground: Tensor | None = None) -> None:
        """Add one object sequence: binary (T, H, W) or (H, W) ``preds`` and ``target`` (and ``foreground``)."""
        j, f = jaccard_and_boundary_f(preds, target, self.bound_th)
        j, f = j.reshape(-1).double(), f.reshape(-1).double()  # () -> (1,) for a single frame
        self.j += j.mean()
        self.f += f.mean()
        self.j_recall += (j > 0.5).double().mean()
        self.f_recall += (f > 0.5).double().mean()
        self.j_decay += davis_decay(j)
        self.f_decay += davis_decay(f)
        self.num_objects += 1
        if self.robustness:
            if foreground is None:
                raise ValueError(
                    "JAndF(robustness=True).update needs foreground: the (T, H, W) union of all "
                    "annotated objects per frame (ReVOS R)"
                )
            p, _ = as_mask_clip(preds, "preds")
            t, _ = as_mask_clip(target, "target")
            fg, _ = as_mask_clip(foreground, "foreground")
            if fg.shape != p.shape:
                raise ValueError(f"foreground must have the shape of preds {tuple(p.shape)}, got {tuple(fg.shape)}")
            self._update_revos(p, t, fg.to(p.device))
        elif foreground is not None:
            raise ValueError("foreground was given but JAndF(robustness=False): construct with robustness=True")

    def _update_revos(self, p: Tensor, t: Tensor, fg: Tensor) -> None:
        """Add one sequence's clip-level ReVOS R and pixel accuracy A to the sums."""
        # R is not a frame mean, but each update is one whole clip, so its scalar R still sums across processes
        self.r += revos_robustness(p, t, fg).double()
        self.a += 1 - count_true(p ^ t).double().sum() / p.numel()

    def compute(self) -> dict[str, Tensor]:
        """Means over the object sequences seen (NaN before any update)."""
        n = self.num_objects.double()
        out = {
            "J": self.j / n,
            "F": self.f / n,
            "J-recall": self.j_recall / n,
            "F-recall": self.f_recall / n,
            "J-decay": self.j_decay / n,
            "F-decay": self.f_decay / n,
        }
        out["J&F"] = (out["J"] + out["F"]) / 2
        if self.robustness:
            out["R"] = self.r / n
            out["A"] = self.a / n
        return {key: value.float() for key, value in out.items()}
