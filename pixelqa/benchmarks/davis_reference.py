"""Per-frame numpy/OpenCV port of the DAVIS 2017 J and F measures: the independent truth and the benchmark baseline.

Written from the published definition of davisvideochallenge/davis2017-evaluation (``db_eval_iou``,
``db_eval_boundary``/``f_measure``, ``_seg2bmap``): plain loops over frames, OpenCV dilation with the scikit-image
disk footprint, exactly as the official evaluation computes them. Kept deliberately simple: it is the yardstick that
``pixelqa.metrics.functional`` is tested and timed against, not the implementation we use.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def reference_jaccard(annotation: np.ndarray, segmentation: np.ndarray) -> np.ndarray | float:
    """Region similarity J per frame for (H, W) or (T, H, W) masks; an empty union counts as J = 1."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"shape mismatch: annotation {annotation.shape} vs segmentation {segmentation.shape}")
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    inters = np.sum(segmentation & annotation, axis=(-2, -1))
    union = np.sum(segmentation | annotation, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inters / union
    if np.ndim(j) == 0:
        return 1.0 if union == 0 else float(j)
    j[union == 0] = 1.0
    return j


def reference_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a (H, W) mask, offset half a pixel towards the origin."""
    seg = seg.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def reference_disk(radius: float) -> np.ndarray:
    """The scikit-image ``disk(radius)`` footprint (uint8), which the official evaluation uses."""
    from skimage.morphology import disk  # dev dependency: only the reference needs it

    return disk(radius).astype(np.uint8)


def reference_f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one (H, W) frame, DAVIS 2017 definition."""
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = reference_seg2bmap(foreground_mask)
    gt_boundary = reference_seg2bmap(gt_mask)
    footprint = reference_disk(bound_pix)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), footprint)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), footprint)
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def reference_boundary_f(
    annotation: np.ndarray, segmentation: np.ndarray, bound_th: float = 0.008
) -> float | np.ndarray:
    """Boundary F per frame for (H, W) or (T, H, W) masks: a loop of ``reference_f_measure``."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"shape mismatch: annotation {annotation.shape} vs segmentation {segmentation.shape}")
    if annotation.ndim == 2:
        return reference_f_measure(segmentation, annotation, bound_th)
    if annotation.ndim != 3:
        raise ValueError(f"expected (H, W) or (T, H, W) masks, got ndim={annotation.ndim}")
    return np.array([reference_f_measure(segmentation[t], annotation[t], bound_th) for t in range(annotation.shape[0])])


def reference_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """DAVIS mean, recall (fraction of frames > 0.5) and decay (first-quarter mean minus last-quarter mean)."""
    mean = float(np.nanmean(per_frame))
    recall = float(np.nanmean(per_frame > 0.5))
    ids = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(int)
    bins = [per_frame[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay
