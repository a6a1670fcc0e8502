"""Video referring / reasoning segmentation benchmarks (ReVOS, MeViS, Ref-YouTube-VOS, Ref-DAVIS17, Ref-SAV,
GroundMoRe): J, F, J&F per object sequence (DAVIS definition, bound_th 0.008), plus ReVOS's robustness R.

Rows of the result table: one per expression type when the source records one (ReVOS: referring / reasoning),
and `all`. R needs the video's foreground union per frame, which ReVOS shards keep in `meta.foreground_rles`.
Masks are compared on the frames the protocol samples (`data.num_frames`, segment centres). The benchmarks are those
`video_seg_benchmarks()` reads from the protocol registry (`pixelqa.eval.official.register_protocol`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pixelqa.eval.runner import BenchmarkDataError, EvalResult, eval_batches


def video_seg_benchmarks() -> tuple[str, ...]:
    """The benchmarks `evaluate_video_seg` scores teacher-forced: each registered protocol (`official.list_protocols`)
    that is a VideoSegProtocol named after the source whose shards it reads (`mevis_server` reads mevis's: not one)."""
    # official is imported on use so that importing pixelqa.eval does not load every protocol
    from pixelqa.eval.official import VideoSegProtocol, teacher_forced_names

    return teacher_forced_names(VideoSegProtocol)


def _foreground(sample: Any, target: torch.Tensor) -> torch.Tensor | None:
    """(T, H, W) bool union of all annotated objects per sampled frame (ReVOS meta), or None when absent."""
    rles = (sample.meta or {}).get("foreground_rles") if sample is not None else None
    if not rles:
        return None
    from pixelqa.data import masks

    frames = sample.meta.get("source_frames") or list(range(target.shape[0]))
    fg = np.stack([masks.decode(rles[f]) for f in frames])
    return torch.from_numpy(fg).to(target.device)


def evaluate_video_seg(model: Any, recipe: Any, source: str, num_overlays: int = 4) -> EvalResult:
    """Score `model` on `source`'s split `recipe.eval.split` from its shards."""
    from pixelqa.metrics import JAndF
    from pixelqa.train.module import overlay_items

    groups: dict[str, Any] = {}
    overlays: list[dict] = []
    typed: dict[bool, list[str]] = {True: [], False: []}  # sample keys with / without the per-sample meta fields
    with_fg: dict[bool, list[str]] = {True: [], False: []}
    for batch, out, samples in eval_batches(model, recipe, source, recipe.eval.split, recipe.eval.max_samples):
        for i in range(batch.size):
            sample = samples.get(batch.keys[i])
            meta = (sample.meta or {}) if sample is not None else {}
            typed["expression_type" in meta].append(batch.keys[i])
            with_fg[bool(meta.get("foreground_rles"))].append(batch.keys[i])
            kind = str(meta.get("expression_type", "all"))
            pred = out.pred_masks[i] > 0  # (K, T, H, W)
            target = batch.seg_masks[i].bool()
            valid = batch.seg_valid[i]
            for k in range(target.shape[0]):
                frames = valid[k]
                if not frames.any():
                    continue
                p, t = pred[k][frames], target[k][frames]
                fg = _foreground(sample, target[k])
                for name in {kind, "all"}:
                    if name not in groups:
                        groups[name] = JAndF(robustness=fg is not None)
                    metric = groups[name]
                    if metric.robustness:
                        metric.update(p, t, (fg[frames] if fg is not None else t) | t)
                    else:
                        metric.update(p, t)
        if len(overlays) < num_overlays:
            overlays.extend(overlay_items(batch, out.pred_masks, num_overlays - len(overlays)))
    where = f"{source}/{recipe.eval.split}"
    for field_name, split_keys in (("expression_type", typed), ("foreground_rles", with_fg)):
        if split_keys[True] and split_keys[False]:  # a subset row or R computed from what one sample lacks
            raise BenchmarkDataError(
                f"{where}: sample {split_keys[False][0]!r} has no meta.{field_name}, which {len(split_keys[True])} "
                f"other samples have ({len(split_keys[False])} without); the shards are damaged or mixed: rebuild them"
            )
    if "all" not in groups:
        raise ValueError(f"{where}: no segmentation targets found; expected <|seg|> samples")
    rows = []
    for name in sorted(groups, key=lambda n: (n == "all", n)):
        scores = {k: float(v) for k, v in groups[name].compute().items()}
        row = {"subset": name, "objects": int(groups[name].num_objects)}
        row.update({k: scores[k] for k in ("J", "F", "J&F", "R") if k in scores})
        rows.append(row)
    metrics = {k: v for k, v in rows[-1].items() if k in ("J", "F", "J&F", "R")}
    return EvalResult(metrics, rows, overlays)
