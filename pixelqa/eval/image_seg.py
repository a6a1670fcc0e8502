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

The benchmarks are those `image_seg_benchmarks()` reads from the protocol registry: each registered
`ImageSegProtocol` named after its source (the six built-in ones, RefCOCO/+/g, RefCOCOg google, RefClef and ReasonSeg,
then any registered with `pixelqa.eval.official.register_protocol`); `rec_benchmarks()` are those whose protocol
declares `rec`. `IMAGE_SEG_BENCHMARKS` and `REC_BENCHMARKS` read the same, at the time they are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixelqa.eval.runner import EvalResult, eval_batches

if TYPE_CHECKING:
    from pixelqa.eval.official import ImageSegProtocol


def image_seg_benchmarks() -> tuple[str, ...]:
    """The benchmarks `evaluate_image_seg` scores teacher-forced: each registered protocol (`official.list_protocols`)
    that is an ImageSegProtocol named after the source whose shards it reads, in registration order."""
    # official is imported on use so that importing pixelqa.eval does not load every protocol
    from pixelqa.eval.official import ImageSegProtocol, teacher_forced_names

    return teacher_forced_names(ImageSegProtocol)


def rec_benchmarks() -> tuple[str, ...]:
    """The image benchmarks whose protocol declares `rec` (REC@0.5 from the annotation box): not ReasonSeg, which has
    no boxes and for which the official scripts report no REC."""
    return tuple(name for name in image_seg_benchmarks() if image_seg_protocol(name).rec)


def image_seg_protocol(source: str, switches: Sequence[str] = ()) -> ImageSegProtocol:
    """The registered protocol of image benchmark `source` with the named switches on (a ValueError naming the
    benchmarks for any other name)."""
    from pixelqa.eval.official import ImageSegProtocol, get_official

    names = image_seg_benchmarks()
    if source not in names:
        raise ValueError(f"source: got {source!r}, expected an image segmentation benchmark, one of {list(names)}")
    protocol = get_official(source, switches)
    if not isinstance(protocol, ImageSegProtocol):  # image_seg_benchmarks() built it as one a moment ago
        raise TypeError(f"{source}: protocol {type(protocol).__name__}, expected an ImageSegProtocol")
    return protocol


def __getattr__(name: str) -> Any:
    """`IMAGE_SEG_BENCHMARKS` and `REC_BENCHMARKS` (the names before discovery): read from the registry when read."""
    if name == "IMAGE_SEG_BENCHMARKS":
        return image_seg_benchmarks()
    if name == "REC_BENCHMARKS":
        return rec_benchmarks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from pixelqa.eval.official import object_volume, target_ids
    from pixelqa.train.module import overlay_items

    source, *named = source.split("+")
    # the suite's (registered) protocol object: its pixel counting, REC, switches and aggregation are this one's too
    protocol = image_seg_protocol(source, [*named, *switches])
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
