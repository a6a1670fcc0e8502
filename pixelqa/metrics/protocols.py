"""Per-sample scores and aggregations of the official evaluation scripts, where they differ from the DAVIS / LISA
cores in `pixelqa.metrics.functional` (which they reuse for the per-frame J and boundary F).

    expression_jf(pred, gt)                     (J, F) frame means of one expression (MeViS, Ref-DAVIS17, Ref-SAV)
    revos_expression(pred, gt, foreground)      J, F, A, R corrected and as-run (0/255 predictions), rounded
    revos_rows(records)                         referring / reasoning / overall (overall = mean of subset means)
    rec_pred_box(mask) / box_iou(a, b)          REC: tight box after dropping small 8-connected components; IoU
    pixelqa_object(pred, gt)                    PixelQA's per-object volume IoU and pixel F1 (both empty -> 0)
    groundmore_window(frame_numbers, ...)       which frames of a GroundMoRe clip fall inside the action window

Masks are numpy or torch bool arrays: (T, H, W) for videos, (H, W) for images. Every function returns plain
Python floats so the records can be written as JSON lines and merged across processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from pixelqa.metrics.functional import jaccard_and_boundary_f

# The release's epsilon of R and of PixelQA's J / F
EPS = 1e-6
# REC: connected components below this many pixels are dropped before the box is taken (8-connectivity)
REC_MIN_COMPONENT = 10
# ReVOS: value of a predicted foreground pixel as the official script reads the prediction PNGs
AS_RUN_FOREGROUND = 255


def _np_bool(x: np.ndarray | torch.Tensor, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    """x as a numpy bool array, checked to have one of the given ranks."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim not in ndim:
        raise ValueError(f"{name}: got shape {arr.shape}, expected {' or '.join(f'{n}-D' for n in ndim)} masks")
    return arr.astype(bool)


def _same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    """Raise when two mask arrays differ in shape."""
    if a.shape != b.shape:
        raise ValueError(f"{names}: got shapes {a.shape} and {b.shape}, expected equal shapes")


def expression_jf(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(mean J, mean F) over the frames of one expression: DAVIS J and boundary F per frame, then the frame mean."""
    p, g = _np_bool(pred, "pred", (3,)), _np_bool(gt, "gt", (3,))
    _same_shape(p, g, "pred/gt")
    j, f = jaccard_and_boundary_f(torch.from_numpy(p), torch.from_numpy(g))
    return float(j.double().mean()), float(f.double().mean())


def revos_expression(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    foreground: np.ndarray | torch.Tensor,
    digits: int = 2,
) -> dict[str, float]:
    """One ReVOS expression over all its frames, in percent rounded to `digits` decimals as the official script.

    J, F: frame means (DAVIS). A = mean(gt == pred), R = max(0, 1 - sum(~gt & pred) / (|foreground| + 1e-6)),
    both over the whole clip. `A_as_run` / `R_as_run` read the prediction as the official script does (0/255
    PNGs against 0/1 ground truth): A counts only background agreement and each false-positive pixel counts 255
    times in R. The paper's Table 1 R is `R_as_run`.
    """
    p, g = _np_bool(pred, "pred", (3,)), _np_bool(gt, "gt", (3,))
    fg = _np_bool(foreground, "foreground", (3,))
    _same_shape(p, g, "pred/gt")
    _same_shape(p, fg, "pred/foreground")
    j, f = expression_jf(p, g)
    area = float(fg.sum())
    false_pos = float((p & ~g).sum())
    values = {
        "J": j,
        "F": f,
        "A": float((p == g).mean()),
        "R": max(0.0, 1.0 - false_pos / (area + EPS)),
        "A_as_run": float((~p & ~g).mean()),
        "R_as_run": max(0.0, 1.0 - AS_RUN_FOREGROUND * false_pos / (area + EPS)),
    }
    return {k: round(100.0 * v, digits) for k, v in values.items()}


REVOS_KEYS: tuple[str, ...] = ("J", "F", "J&F", "A", "A_as_run", "R", "R_as_run")


def _mean_scores(records: Sequence[dict]) -> dict[str, float]:
    """Mean of every ReVOS score over records (percent), J&F = (mean J + mean F) / 2."""
    out = {k: float(np.mean([r[k] for r in records])) for k in ("J", "F", "A", "A_as_run", "R", "R_as_run")}
    out["J&F"] = (out["J"] + out["F"]) / 2
    return out


def revos_rows(records: Iterable[dict]) -> list[dict]:
    """Rows referring / reasoning / overall of ReVOS: subset means of the per-expression scores (percent);
    overall = the mean of the two subset means (not a pooled mean), as the official script."""
    records = list(records)
    rows = []
    subsets = {}
    for name in ("referring", "reasoning"):
        chosen = [r for r in records if r.get("subset") == name]
        if chosen:
            subsets[name] = _mean_scores(chosen)
            rows.append({"subset": name, "expressions": len(chosen), **{k: subsets[name][k] for k in REVOS_KEYS}})
    if subsets:
        overall = {k: float(np.mean([s[k] for s in subsets.values()])) for k in REVOS_KEYS}
        rows.append({"subset": "overall", "expressions": len(records), **overall})
    return rows


def drop_small_components(mask: np.ndarray | torch.Tensor, min_size: int = REC_MIN_COMPONENT) -> np.ndarray:
    """The (H, W) mask without its 8-connected components of fewer than `min_size` pixels."""
    import cv2  # here, not at import: OpenCV's loader rewrites LD_LIBRARY_PATH, which subprocesses inherit

    m = _np_bool(mask, "mask", (2,)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_size
    return keep[labels]


def rec_pred_box(mask: np.ndarray | torch.Tensor) -> list[float] | None:
    """REC's predicted box [x1, y1, x2, y2]: inclusive max pixel indices of the mask after dropping components
    under 10 px; None when nothing is left (a miss)."""
    m = drop_small_components(mask)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes, areas (x2 - x1) * (y2 - y1) (no +1), 0 when the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def rec_hit(mask: np.ndarray | torch.Tensor | None, gt_box: Sequence[float], threshold: float = 0.5) -> bool:
    """Whether the predicted mask's REC box overlaps the annotation box [x1, y1, x2, y2] with IoU >= threshold."""
    if mask is None:
        return False
    box = rec_pred_box(mask)
    return box is not None and box_iou(box, gt_box) >= threshold


def image_iou_counts(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(intersection, union) pixel counts of one (H, W) prediction, for cIoU (sums) and gIoU (1 when U = 0)."""
    p, g = _np_bool(pred, "pred", (2,)), _np_bool(gt, "gt", (2,))
    _same_shape(p, g, "pred/gt")
    return int((p & g).sum()), int((p | g).sum())


def pixelqa_object(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(J, F) of one PixelQA object over its whole frame volume: J = I / (U + 1e-6), F = pixel F1 from precision
    I / (|P| + 1e-6) and recall I / (|G| + 1e-6) (not the boundary F). Both empty scores 0, as released."""
    p, g = _np_bool(pred, "pred", (2, 3)), _np_bool(gt, "gt", (2, 3))
    _same_shape(p, g, "pred/gt")
    inter = float((p & g).sum())
    union = float((p | g).sum())
    precision = inter / (float(p.sum()) + EPS)
    recall = inter / (float(g.sum()) + EPS)
    f1 = 2 * precision * recall / (precision + recall + EPS)
    return inter / (union + EPS), f1


def groundmore_window(
    frame_numbers: Sequence[int], start: float, end: float, clip_start: float = 0.0, fps: float = 6.0
) -> list[bool]:
    """Per frame: whether its source frame number lies in the action window
    [(start - clip_start) * fps, (end - clip_start) * fps - 1] (GroundMoRe's ground truth is zero outside)."""
    lo = (float(start) - float(clip_start)) * fps
    hi = (float(end) - float(clip_start)) * fps - 1
    return [lo <= float(n) <= hi for n in frame_numbers]
