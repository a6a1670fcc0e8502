"""Benchmark protocols on real shard formats: a ReVOS fixture (the release's file layout) converted and sharded
by the data package, scored by the video-seg protocol with the tiny model; J checked against a direct
recomputation of the region Jaccard from the model's own predictions."""

import numpy as np
import pytest
import torch
from fixtures_video import build_revos

from pixelqa.config import load_recipe, to_object
from pixelqa.data import masks
from pixelqa.data.schema import Media, ObjectTrack, Sample, Turn, encode_frame
from pixelqa.data.shards import build_shards
from pixelqa.eval import get_protocol, list_benchmarks
from pixelqa.eval.model_loading import load_model
from pixelqa.eval.runner import eval_batches
from pixelqa.metrics.functional import jaccard


@pytest.fixture(scope="module")
def revos(tmp_path_factory):
    root = tmp_path_factory.mktemp("revos")
    build_revos(root / "raw")
    build_shards("revos", root / "raw", root / "shards", split="valid", progress=False)
    recipe = to_object(
        load_recipe(["recipe=stage3", f"data.shards={root / 'shards'}", "eval.split=valid", "data.val_batch_size=2"])
    )
    torch.set_num_threads(1)
    return recipe, load_model(recipe, None)


def test_video_seg_protocol_reports_j_f_r_by_expression_type(revos):
    recipe, model = revos
    result = get_protocol("revos")(model, recipe, num_overlays=1)
    subsets = [r["subset"] for r in result.rows]
    assert subsets == ["reasoning", "referring", "all"]
    # 3 expressions, each one <|seg|>; the blank one ("the flying saucer") has an empty target: R counts its
    # predicted area as false positives, J scores 1 only if the prediction is empty too
    assert result.rows[-1]["objects"] == 3 and result.rows[1]["objects"] == 2
    for key in ("J", "F", "J&F", "R"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.metrics["J&F"] == pytest.approx((result.metrics["J"] + result.metrics["F"]) / 2)

    # Independent recomputation of J: per object, mean over annotated frames of |P & G| / |P | G| (1 if both empty).
    per_object = []
    for batch, out, _ in eval_batches(model, recipe, "revos", "valid"):
        for i in range(batch.size):
            for k in range(batch.seg_masks[i].shape[0]):
                frames = batch.seg_valid[i][k]
                p = (out.pred_masks[i][k] > 0)[frames].numpy()
                g = batch.seg_masks[i][k][frames].numpy()
                inter = (p & g).sum((1, 2))
                union = (p | g).sum((1, 2))
                per_object.append(np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean())
    assert result.metrics["J"] == pytest.approx(float(np.mean(per_object)), abs=1e-5)
    assert float(jaccard(torch.ones(2, 4, 4, dtype=torch.bool), torch.ones(2, 4, 4, dtype=torch.bool)).mean()) == 1.0


def test_unknown_benchmark_and_missing_shards_are_named(revos):
    recipe, model = revos
    assert {"synthetic", "revos", "mevis", "refcoco", "reasonseg"} <= set(list_benchmarks())
    with pytest.raises(ValueError, match="eval.benchmark: got 'nope'"):
        get_protocol("nope")
    with pytest.raises(FileNotFoundError, match="python -m pixelqa.data build mevis"):
        get_protocol("mevis")(model, recipe)


def test_image_seg_protocol_ciou_giou_on_a_refcoco_fixture(tmp_path, revos):
    from fixtures_image import build_refer

    _, model = revos  # the same tiny untrained network
    build_refer(tmp_path / "raw")
    build_shards("refcoco", tmp_path / "raw", tmp_path / "shards", split="val", progress=False)
    recipe = to_object(load_recipe(["recipe=stage3", f"data.shards={tmp_path / 'shards'}", "eval.split=val"]))
    result = get_protocol("refcoco")(model, recipe, num_overlays=0)
    inter = union = 0
    for batch, out, _ in eval_batches(model, recipe, "refcoco", "val"):
        for i in range(batch.size):
            p, g = (out.pred_masks[i][:, 0] > 0), batch.seg_masks[i][:, 0]
            inter += int((p & g).sum())
            union += int((p | g).sum())
    assert result.rows[0]["expressions"] == 1
    assert result.metrics["cIoU"] == pytest.approx(inter / (union + 1e-10), abs=1e-6)
    assert 0.0 <= result.metrics["gIoU"] <= 1.0 and 0.0 <= result.metrics["REC@0.5"] <= 1.0


# ------------------------------------------------------------------ teacher-forced image scoring, by hand


def _image_sample(key: str, gt: np.ndarray, meta: dict, seg: bool = True) -> Sample:
    h, w = gt.shape
    answer = Turn("assistant", "<|seg|>", seg_objects=[1]) if seg else Turn("assistant", "none")
    return Sample(
        key=key,
        source="refcoco",
        split="val",
        task="res",
        media=Media("image", [encode_frame(np.zeros((h, w, 3), np.uint8), "png")], (h, w), "png"),
        objects={1: ObjectTrack(masks={0: masks.encode(gt)})},
        turns=[Turn("user", "seg"), answer],
        meta=meta,
    )


def _rect(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def _evaluate(monkeypatch, items, source: str, **kwargs):
    """evaluate_image_seg on one fake batch: items = (sample, pred (K, H, W), target (K, H, W)) per sample."""
    from types import SimpleNamespace

    from pixelqa.eval import image_seg

    batch = SimpleNamespace(
        size=len(items),
        keys=[s.key for s, _, _ in items],
        seg_masks=[torch.from_numpy(t)[:, None] for _, _, t in items],  # (K, T=1, H, W)
    )
    out = SimpleNamespace(pred_masks=[torch.where(torch.from_numpy(p), 4.0, -4.0)[:, None] for _, p, _ in items])
    samples = {s.key: s for s, _, _ in items}
    monkeypatch.setattr(image_seg, "eval_batches", lambda *a, **k: iter([(batch, out, samples)]))
    recipe = SimpleNamespace(eval=SimpleNamespace(split="val", max_samples=None))
    return image_seg.evaluate_image_seg(None, recipe, source, num_overlays=0, **kwargs)


def test_teacher_forced_refcoco_scores_as_the_official_protocol(monkeypatch):
    h = w = 12
    # r1: mask 4x4 at (2..5, 2..5) but annotation box [2, 2, 8, 8]; prediction 6x6 at (2..7) + a 1-px speck.
    #     I 16, U 37. REC: speck dropped, box [2, 2, 7, 7] (inclusive max) vs [2, 2, 8, 8], no +1: 25 / 36 -> hit
    #     (against the mask's tight box [2, 2, 5, 5] it would be 16 / 36, a miss)
    gt1 = _rect(h, w, slice(2, 6), slice(2, 6))
    p1 = _rect(h, w, slice(2, 8), slice(2, 8))
    p1[11, 11] = True
    r1 = _image_sample("r1", gt1, {"box_xyxy": [2.0, 2.0, 8.0, 8.0]})
    # r2: mask 10x10 at (0..9), box [0, 0, 10, 10]; prediction 8x8. I 64, U 100. REC: [0, 0, 7, 7] vs the box,
    #     no +1: 49 / 100 -> miss (with +1 pixels it would be 64 / 121 = 0.53, a hit)
    gt2 = _rect(h, w, slice(0, 10), slice(0, 10))
    r2 = _image_sample("r2", gt2, {"box_xyxy": [0.0, 0.0, 10.0, 10.0]})
    p2 = _rect(h, w, slice(0, 8), slice(0, 8))
    # r3: empty mask, empty prediction: I 0, U 0 -> IoU 1; REC: no box predicted -> a miss that counts
    r3 = _image_sample("r3", np.zeros((h, w), bool), {"box_xyxy": [0.0, 0.0, 3.0, 3.0]})
    p3 = np.zeros((h, w), bool)
    # r4: no <|seg|> in the reference answer: an empty prediction against the object (4 px): I 0, U 4, a miss
    gt4 = _rect(h, w, slice(0, 2), slice(0, 2))
    r4 = _image_sample("r4", gt4, {"box_xyxy": [0.0, 0.0, 2.0, 2.0]}, seg=False)
    empty = np.zeros((0, h, w), bool)
    items = [(r1, p1[None], gt1[None]), (r2, p2[None], gt2[None]), (r3, p3[None], p3[None]), (r4, empty, empty)]
    result = _evaluate(monkeypatch, items, "refcoco")
    assert result.rows[0]["expressions"] == 4
    assert result.metrics["cIoU"] == pytest.approx(80 / 141, rel=1e-12)
    assert result.metrics["gIoU"] == pytest.approx((16 / 37 + 64 / 100 + 1.0 + 0.0) / 4, rel=1e-12)
    assert result.metrics["REC@0.5"] == 0.25


def test_teacher_forced_reasonseg_ignore_region(monkeypatch):
    h = w = 8
    gt = _rect(h, w, slice(0, 2), slice(0, 4))  # 8 px
    ignore = masks.encode(_rect(h, w, slice(2, 4), slice(0, 4)))  # 8 px don't-care just below
    s1 = _image_sample("s1", gt, {"query": "q", "is_sentence": False, "ignore_rle": ignore})
    s2 = _image_sample("s2", gt, {"query": "q", "is_sentence": False, "ignore_rle": ignore})
    s3 = _image_sample("s3", gt, {"query": "q", "is_sentence": False})
    p1 = _rect(h, w, slice(0, 4), slice(0, 4))  # the target and the whole ignore region
    p2 = _rect(h, w, slice(2, 4), slice(0, 4))  # the ignore region only
    p3 = _rect(h, w, slice(0, 1), slice(0, 4))  # half the target (no ignore region on s3)
    items = [(s1, p1[None], gt[None]), (s2, p2[None], gt[None]), (s3, p3[None], gt[None])]
    # LISA's rule: don't-care pixels in neither I nor U. s1: I 8, U 8; s2: I 0, U 8; s3: I 4, U 8
    excluded = _evaluate(monkeypatch, items, "reasonseg", switches=["exclude_ignore"])
    assert excluded.metrics == {"cIoU": 12 / 24, "gIoU": pytest.approx((1.0 + 0.0 + 0.5) / 3, rel=1e-12)}
    assert _evaluate(monkeypatch, items, "reasonseg+exclude_ignore").metrics == excluded.metrics
    # as the official run (and the suite's default): the region is background. s1: 8 / 16, s2: 0 / 16, s3: 4 / 8
    as_run = _evaluate(monkeypatch, items, "reasonseg")
    assert as_run.metrics == {"cIoU": 12 / 40, "gIoU": pytest.approx((0.5 + 0.0 + 0.5) / 3, rel=1e-12)}
    assert "REC@0.5" not in as_run.rows[0]  # ReasonSeg has no boxes; the official scripts report no REC
