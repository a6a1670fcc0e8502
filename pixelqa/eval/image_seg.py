"""Image referring / reasoning segmentation benchmarks (RefCOCO/+/g, RefClef, ReasonSeg) on teacher-forced
predictions, scored by the official rules: the suite's `pixelqa.eval.official.ImageSegProtocol` (its I / U counts,
switches and aggregation) and `pixelqa.metrics.protocols` (REC):

    per expression   I = |pred & gt|, U = |pred | gt| at the source resolution; ReasonSeg's don't-care pixels
                     (`meta["ignore_rle"]`) as the protocol counts them: background as the official run, or left
                     out of both with the switch `exclude_ignore` (LISA's rule)
    cIoU = sum I / sum U, gIoU = mean I / U (1 when U = 0, no epsilon)
    REC@0.5 (not ReasonSeg)   the mask's box after dropping 8-connected components under 10 px, IoU without +1
                     against the annotation box `meta["box_xyxy"]` (not the mask's tight box), hit at 0.5

Only the predictions differ from `python -m pixelqa.evaluate suite=paper`: here the model reads the reference
answer, so every expression gets a mask (the suite generates, and a missing <|seg|> scores an empty mask), and the
prompt is the shard's turn text, not the official template. Every expression is scored, empty targets included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixelqa.eval.runner import EvalResult, eval_batches

if TYPE_CHECKING:
    from pixelqa.eval.official import ImageSegProtocol

IMAGE_SEG_BENCHMARKS: tuple[str, ...] = (
    "refcoco",
    "refcoco_plus",
    "refcocog",
    "refcocog_google",
    "refclef",
    "reasonseg",
)
# ReasonSeg has no boxes and the official scripts report no REC for it
REC_BENCHMARKS: tuple[str, ...] = tuple(b for b in IMAGE_SEG_BENCHMARKS if b != "reasonseg")


def image_seg_records(
    protocol: ImageSegProtocol,
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    meta: Mapping[str, Any],
    key: str = "?",
) -> list[dict[str, Any]]:
    """The official protocol's record per expression of one sample ((K, H, W) masks): I, U (+ rec_hit for REC)."""
    from pixelqa.metrics import protocols as pm

    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    p, t = p.astype(bool), t.astype(bool)
    where = f"{protocol.name} sample {key}"
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"{where}: pred/target got shapes {p.shape} and {t.shape}, expected equal (K, H, W)")
    box = meta.get("box_xyxy")
    if protocol.rec and (box is None or len(p) != 1):
        # the annotation box belongs to one expression; grouped (train) samples carry none
        raise ValueError(
            f"{where}: REC needs one expression per sample with meta['box_xyxy'] (the converter's val/test "
            f"samples), got {len(p)} expression(s) and box {box!r}"
        )
    records = []
    for pk, tk in zip(p, t):
        inter, union = protocol.iou_counts(pk, tk, meta, where)
        record: dict[str, Any] = {"I": inter, "U": union}
        if protocol.rec:
            record["rec_hit"] = bool(pm.rec_hit(pk, box))
        records.append(record)
    return records


def evaluate_image_seg(
    model: Any, recipe: Any, source: str, num_overlays: int = 4, switches: Sequence[str] = ()
) -> EvalResult:
    """Score `model` on `source`'s split `recipe.eval.split`: one (H, W) mask per <|seg|> target; `switches` (or
    '+'-suffixes of `source`, 'reasonseg+exclude_ignore') as the official protocol's."""
    from pixelqa.eval.official import ImageSegProtocol, object_volume, target_ids
    from pixelqa.train.module import overlay_items

    source, *named = source.split("+")
    # the suite's protocol object: its pixel counting, switches and aggregation are this evaluation's too
    protocol = ImageSegProtocol(source, rec=source in REC_BENCHMARKS)
    protocol.set_switches([*named, *switches])
    records: list[dict[str, Any]] = []
    overlays: list[dict] = []
    for batch, out, samples in eval_batches(model, recipe, source, recipe.eval.split, recipe.eval.max_samples):
        for i in range(batch.size):
            sample = samples[batch.keys[i]]
            target = batch.seg_masks[i].bool()  # (K, T=1, H, W)
            if target.shape[0] == 0:
                # no <|seg|> to decode: the official scripts score an empty mask against the sample's objects
                gt = object_volume(sample, target_ids(sample), [0])
                records += image_seg_records(protocol, np.zeros_like(gt), gt, sample.meta or {}, sample.key)
                continue
            pred = out.pred_masks[i][:, 0] > 0
            records += image_seg_records(protocol, pred, target[:, 0], sample.meta or {}, sample.key)
        if len(overlays) < num_overlays:
            overlays.extend(overlay_items(batch, out.pred_masks, num_overlays - len(overlays)))
    if not records:
        raise ValueError(f"{source}/{recipe.eval.split}: no samples found; expected <|seg|> samples")
    row = protocol.aggregate(records)[-1]
    row.pop("no_seg", None)  # teacher forcing decodes every reference <|seg|>: nothing can be missing
    scores = {k: float(v) for k, v in row.items() if k in ("cIoU", "gIoU", "REC@0.5")}
    return EvalResult(scores, [row], overlays)
