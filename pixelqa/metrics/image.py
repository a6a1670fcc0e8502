"""Image metrics: cIoU / gIoU for referring and reasoning segmentation, REC accuracy from masks."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from pixelqa.metrics.functional import as_mask_clip, count_true

__all__ = ["CIoU", "GIoU", "ImageSegIoU", "RECAccuracy", "box_iou_inclusive", "mask_to_box"]

# LISA's evaluation (RefCOCO / ReasonSeg): per-mask IoU = I / (U + 1e-5), an empty union counts 1.0;
# cIoU = sum I / (sum U + 1e-10).
_GIOU_EPS = 1e-5
_CIOU_EPS = 1e-10


class ImageSegIoU(Metric):
    """cIoU and gIoU of binary masks, following LISA's RefCOCO / ReasonSeg evaluation.

    Each (H, W) pair in ``update(preds, target)`` ((N, H, W) or (H, W)) is one sample (one expression).
    cIoU = cumulative intersection / (cumulative union + 1e-10); gIoU = mean over samples of I / (U + 1e-5), where a
    sample whose prediction and target are both empty scores 1.0. ``compute()`` returns {"cIoU": ..., "gIoU": ...}.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("intersection", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("giou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add binary masks: (N, H, W) or (H, W) ``preds`` and ``target`` of the same shape."""
        p, _ = as_mask_clip(preds, "preds")
        t, _ = as_mask_clip(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"preds and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
        t = t.to(p.device)
        inter = count_true(p & t)
        union = count_true(p | t)
        per_sample = inter.double() / (union.double() + _GIOU_EPS)
        per_sample = torch.where(union == 0, torch.ones_like(per_sample), per_sample)  # "no-object" sample
        self.intersection += inter.sum()
        self.union += union.sum()
        self.giou_sum += per_sample.sum()
        self.num_samples += p.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """{"cIoU", "gIoU"} as float32 scalars (both NaN before any update, as the other metrics give)."""
        ciou = self.intersection.double() / (self.union.double() + _CIOU_EPS)
        if int(self.num_samples) == 0:  # no sample: no score (0 / eps would read as a score of 0)
            ciou = torch.full_like(ciou, float("nan"))
        giou = self.giou_sum / self.num_samples.double()
        return {"cIoU": ciou.float(), "gIoU": giou.float()}


class CIoU(ImageSegIoU):
    """Cumulative IoU alone: ``ImageSegIoU(...).compute()["cIoU"]``."""

    def compute(self) -> Tensor:
        """Cumulative intersection over cumulative union."""
        return super().compute()["cIoU"]


class GIoU(ImageSegIoU):
    """Mean per-sample IoU alone: ``ImageSegIoU(...).compute()["gIoU"]``."""

    def compute(self) -> Tensor:
        """Mean of per-sample IoUs (both-empty samples count 1)."""
        return super().compute()["gIoU"]


def mask_to_box(masks: Tensor | np.ndarray) -> Tensor:
    """Tight boxes of binary (H, W) or (N, H, W) masks: float (4,) or (N, 4) xyxy in inclusive pixel indices.

    (x0, y0) is the first and (x1, y1) the last foreground column/row, so a single pixel at (x, y) gives
    (x, y, x, y) (the torchvision ``masks_to_boxes`` convention). An empty mask gives (-1, -1, -1, -1).
    """
    m, squeezed = as_mask_clip(masks, "masks")
    cols = m.any(dim=1)  # (N, H, W) -> (N, W)
    rows = m.any(dim=2)  # (N, H, W) -> (N, H)
    xs = torch.arange(m.shape[2], device=m.device)
    ys = torch.arange(m.shape[1], device=m.device)
    big = max(m.shape[1], m.shape[2])
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~cols.any(1)] = -1.0
    return boxes[0] if squeezed else boxes


def box_iou_inclusive(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Element-wise IoU of (N, 4) xyxy boxes in inclusive pixel indices (width = x1 - x0 + 1); shape (N,)."""
    if boxes_a.shape != boxes_b.shape or boxes_a.ndim != 2 or boxes_a.shape[1] != 4:
        raise ValueError(f"boxes must both be (N, 4) xyxy, got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}")
    a, b = boxes_a.double(), boxes_b.double()
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]) + 1).clamp(min=0)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0] + 1).clamp(min=0) * (a[:, 3] - a[:, 1] + 1).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0] + 1).clamp(min=0) * (b[:, 3] - b[:, 1] + 1).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


class RECAccuracy(Metric):
    """Referring expression comprehension accuracy: a prediction is correct when box IoU with the GT box >= 0.5.

    ``update(preds, target)``: ``preds`` is either binary masks (N, H, W) / (H, W), turned into boxes with
    ``mask_to_box`` (an empty mask is always wrong), or boxes (N, 4); ``target`` is GT boxes (N, 4) / (4,). All boxes
    are xyxy in inclusive pixel indices (COCO [x, y, w, h] -> [x, y, x + w - 1, y + h - 1]).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, iou_threshold: float = 0.5, **kwargs) -> None:
        """iou_threshold: the box IoU a correct prediction reaches, in (0, 1]."""
        super().__init__(**kwargs)
        if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real) or not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold: got {iou_threshold!r}, expected a number in (0, 1]")
        self.iou_threshold = float(iou_threshold)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add predictions (masks (N, H, W) or boxes (N, 4)) and GT boxes (N, 4)."""
        target = torch.as_tensor(target)
        target = target.reshape(1, 4) if target.shape == (4,) else target
        if target.ndim != 2 or target.shape[1] != 4:
            raise ValueError(f"target must be GT boxes (N, 4) xyxy, got shape {tuple(target.shape)}")
        preds = torch.as_tensor(preds)
        is_boxes = preds.ndim == 2 and preds.shape[1] == 4 and preds.dtype != torch.bool
        if preds.shape == (4,) and preds.dtype != torch.bool:
            preds, is_boxes = preds.reshape(1, 4), True
        if is_boxes:
            valid = torch.ones(preds.shape[0], dtype=torch.bool, device=preds.device)
            boxes = preds.float()
        else:
            boxes = mask_to_box(preds).reshape(-1, 4)
            valid = boxes[:, 2] >= 0
        if boxes.shape[0] != target.shape[0]:
            raise ValueError(f"preds hold {boxes.shape[0]} predictions but target holds {target.shape[0]} boxes")
        iou = box_iou_inclusive(boxes, target.to(boxes.device).float())
        self.correct += ((iou >= self.iou_threshold) & valid).sum()
        self.total += boxes.shape[0]

    def compute(self) -> Tensor:
        """Fraction of correct predictions (NaN before any update)."""
        return (self.correct.double() / self.total.double()).float()
