"""Benchmark protocols on real shard formats: a ReVOS fixture (the release's file layout) converted and sharded
by the data package, scored by the video-seg protocol with the tiny model; J checked against a direct
recomputation of the region Jaccard from the model's own predictions."""

import numpy as np
import pytest
import torch
from fixtures_video import build_revos

from pixelqa.config import load_recipe, to_object
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
