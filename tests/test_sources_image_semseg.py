"""Semantic-segmentation converters (ADE20K, COCO-Stuff, Mapillary Vistas) on label PNGs in release format."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_image import H, W, build_ade20k, build_cocostuff, build_mapillary, write_image, write_label_png
from PIL import Image

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import SkippedSample
from pixelqa.data.shards import build_shards
from pixelqa.prompt_format import SEG


def _by_name(sample) -> dict[str, np.ndarray]:
    return {o.category: masks.decode(o.masks[0]) for o in sample.objects.values()}


def test_ade20k_classes_become_objects_and_turns(tmp_path):
    fx = build_ade20k(tmp_path)
    src = get_source("ade20k")
    assert src.items(tmp_path, "train") == ["ADE_train_00000001"]
    (s,) = [x.validate(check_frames=True) for x in src.samples(tmp_path, "train")]
    assert s.task == "semseg" and s.meta["independent_turns"] is True
    got = _by_name(s)
    assert sorted(got) == ["person", "sky"]  # value 3 -> sky, 13 -> person, 0 (other) ignored
    np.testing.assert_array_equal(got["sky"], fx["label"] == 3)
    np.testing.assert_array_equal(got["person"], fx["label"] == 13)
    assert [c["value"] for c in s.meta["classes"]] == [3, 13]
    assert "sky" in s.turns[0].text and s.turns[1].seg_objects == [1] and SEG in s.turns[1].text
    assert "person" in s.turns[2].text and s.turns[3].seg_objects == [2]


def test_cocostuff_zero_based_values_and_hyphenated_classes_skipped(tmp_path):
    fx = build_cocostuff(tmp_path)
    (s,) = [x.validate(check_frames=True) for x in get_source("cocostuff").samples(tmp_path, "train")]
    got = _by_name(s)
    assert sorted(got) == ["dog", "person"]  # 0 -> person, 17 -> dog; 95 building-other and 255 skipped
    np.testing.assert_array_equal(got["person"], fx["label"] == 0)
    np.testing.assert_array_equal(got["dog"], fx["label"] == 17)


def test_mapillary_palette_png_and_config_names(tmp_path):
    fx = build_mapillary(tmp_path)
    assert Image.open(tmp_path / "training/v2.0/labels/abcDEF123.png").mode == "P"
    (s,) = [x.validate(check_frames=True) for x in get_source("mapillary").samples(tmp_path, "train")]
    got = _by_name(s)
    assert sorted(got) == ["bird", "road"]  # 'Unlabeled' is not asked for
    np.testing.assert_array_equal(got["road"], fx["label"] == 1)
    np.testing.assert_array_equal(got["bird"], fx["label"] == 0)


def test_semseg_rgb_label_and_size_mismatch_are_refused(tmp_path):
    build_ade20k(tmp_path)
    lab = tmp_path / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(lab)
    with pytest.raises(ValueError, match="single-channel class-index PNG"):
        list(get_source("ade20k").convert(tmp_path, "train", "ADE_train_00000001"))
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(lab)
    write_image(tmp_path / "images" / "training" / "ADE_train_00000001.jpg", h=H + 1, w=W)
    with pytest.raises(ValueError, match="label size"):
        list(get_source("ade20k").convert(tmp_path, "train", "ADE_train_00000001"))


def test_semseg_missing_folders_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADE20K annotations"):
        get_source("ade20k").items(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="config_v2.0.json"):
        get_source("mapillary").items(tmp_path, "val")


def test_ade20k_out_of_range_value_is_recorded_and_a_classless_image_is_skipped(tmp_path):
    fx = build_ade20k(tmp_path)
    labels, images = tmp_path / "annotations" / "training", tmp_path / "images" / "training"
    damaged = fx["label"].copy()
    damaged[22:24, 0:4] = 200  # no ADE20K label (0..150): 8 pixels of the "other" area
    write_label_png(labels / "ADE_train_00000001.png", damaged)
    for stem, value in (("ADE_train_00000002", 0), ("ADE_train_00000003", 200)):  # all 'other' / all damage
        write_image(images / f"{stem}.jpg", seed=1)
        write_label_png(labels / f"{stem}.png", np.full((H, W), value, dtype=np.uint8))
    # nothing to ask in an image is no damage: counted as skipped, and it does not stop a build (--on-error fail)
    m = build_shards("ade20k", tmp_path, tmp_path / "out", split="train", on_error="fail", progress=False)
    assert m["num_samples"] + m["num_rejects"] + m["num_skipped"] == 3  # one label PNG: a sample, reject or skip
    assert m["num_samples"] == 1 and m["num_rejects"] == 0
    assert [r["key"] for r in m["skipped"]] == ["ADE_train_00000002", "ADE_train_00000003"]
    other, bad = (r["reason"] for r in m["skipped"])
    assert "ADE_train_00000002.png" in other and "0 (other, not asked for)" in other
    assert "ADE_train_00000003.png" in bad and "200 (no ade20k label)" in bad
    (s,) = get_source("ade20k").convert(tmp_path, "train", "ADE_train_00000001")
    assert sorted(_by_name(s.validate())) == ["person", "sky"]  # the image keeps its classes
    assert s.meta["unknown_values"] == [{"value": 200, "pixels": 8}]
    (clean,) = get_source("ade20k").convert(tmp_path, "train", "ADE_train_00000002")
    assert clean.key == "ADE_train_00000002"


def test_cocostuff_and_mapillary_classless_images_are_skipped_naming_the_values(tmp_path):
    build_cocostuff(tmp_path / "cs")
    label = np.full((H, W), 255, dtype=np.uint8)
    label[0:4, :] = 95  # building-other: a class not asked for
    label[4:6, :] = 190  # no COCO-Stuff index (0..181, 255)
    write_label_png(tmp_path / "cs" / "stuffthingmaps_trainval2017" / "train2017" / "000000000009.png", label)
    (r,) = get_source("cocostuff").convert(tmp_path / "cs", "train", "000000000009")
    assert isinstance(r, SkippedSample) and r.key == "000000000009"
    assert "95 (building-other, not asked for)" in r.reason and "255 (unlabeled, not asked for)" in r.reason
    assert "190 (no cocostuff label)" in r.reason

    build_mapillary(tmp_path / "mv")
    lab = tmp_path / "mv" / "training" / "v2.0" / "labels" / "abcDEF123.png"
    write_label_png(lab, np.full((H, W), 2, dtype=np.uint8), palette=True)  # 'Unlabeled' everywhere
    (r,) = get_source("mapillary").convert(tmp_path / "mv", "train", "abcDEF123")
    assert isinstance(r, SkippedSample) and "2 (unlabeled, not asked for)" in r.reason
    build_mapillary(tmp_path / "mv2")
    (s,) = get_source("mapillary").convert(tmp_path / "mv2", "train", "abcDEF123")
    assert "unknown_values" not in s.validate().meta and sorted(_by_name(s)) == ["bird", "road"]
