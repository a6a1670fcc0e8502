"""Image referring / reasoning segmentation benchmarks (RefCOCO/+/g, RefClef, ReasonSeg): cIoU and gIoU
(LISA's definitions, `pixelqa.metrics.ImageSegIoU`), plus REC accuracy from the mask's box (IoU >= 0.5)."""

from __future__ import annotations

from typing import Any

from pixelqa.eval.runner import EvalResult, eval_batches

IMAGE_SEG_BENCHMARKS: tuple[str, ...] = (
    "refcoco",
    "refcoco_plus",
    "refcocog",
    "refcocog_google",
    "refclef",
    "reasonseg",
)


def evaluate_image_seg(model: Any, recipe: Any, source: str, num_overlays: int = 4) -> EvalResult:
    """Score `model` on `source`'s split `recipe.eval.split`: one (H, W) mask per <|seg|> target."""
    from pixelqa.metrics import ImageSegIoU, RECAccuracy, mask_to_box
    from pixelqa.train.module import overlay_items

    iou = ImageSegIoU()
    rec = RECAccuracy()
    overlays: list[dict] = []
    n = 0
    for batch, out, _ in eval_batches(model, recipe, source, recipe.eval.split, recipe.eval.max_samples):
        for i in range(batch.size):
            target = batch.seg_masks[i].bool()  # (K, T=1, H, W)
            if target.numel() == 0:
                continue
            pred = out.pred_masks[i] > 0
            p, t = pred[:, 0], target[:, 0]  # (K, H, W)
            iou.update(p, t)
            nonempty = t.flatten(1).any(1)
            if nonempty.any():
                rec.update(p[nonempty], mask_to_box(t[nonempty]).reshape(-1, 4))  # GT box: the mask's tight box
            n += p.shape[0]
        if len(overlays) < num_overlays:
            overlays.extend(overlay_items(batch, out.pred_masks, num_overlays - len(overlays)))
    if n == 0:
        raise ValueError(f"{source}/{recipe.eval.split}: no segmentation targets found; expected <|seg|> samples")
    scores = {k: float(v) for k, v in iou.compute().items()}
    scores["REC@0.5"] = float(rec.compute())
    rows = [{"subset": "all", "expressions": n, **scores}]
    return EvalResult(scores, rows, overlays)
