"""Semantic-segmentation converters (ADE20K, COCO-Stuff, Mapillary Vistas) on label PNGs in release format."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_image import H, W, build_ade20k, build_cocostuff, build_mapillary, write_image
from PIL import Image

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
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
