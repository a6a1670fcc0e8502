"""Part-segmentation converters (PACO-LVIS, PASCAL-Part) on COCO-format part JSON fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_image import H, W, build_paco, build_pascal_part, rect_mask
from pycocotools import mask as mask_utils

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.sources.paco import split_part_name


def _poly(*polys) -> np.ndarray:
    """pycocotools' own decoding (what COCO.annToMask does) of polygons, merged."""
    rles = mask_utils.frPyObjects([list(p) for p in polys], H, W)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def test_split_part_name_handles_lvis_senses_and_underscores():
    assert split_part_name("car_(automobile):wheel") == ("car", "wheel")
    assert split_part_name("trash_can:lid") == ("trash can", "lid")
    assert split_part_name("dog") == ("dog", None)
    with pytest.raises(ValueError, match="object:part"):
        split_part_name("a:b:c")


def test_paco_groups_annotations_by_category(tmp_path):
    fx = build_paco(tmp_path)
    src = get_source("paco_lvis")
    assert src.items(tmp_path, "train") == [9]
    (s,) = [x.validate(check_frames=True) for x in src.samples(tmp_path, "train")]
    assert s.task == "semseg" and s.meta["file_name"] == "train2017/000000000009.jpg"
    assert [c["category_id"] for c in s.meta["classes"]] == [1, 2, 3]
    car, wheel, lid = (masks.decode(s.objects[i].masks[0]) for i in (1, 2, 3))
    np.testing.assert_array_equal(car, rect_mask(0, 8, 30, 23))  # the RLE annotation, as drawn
    a1, a2 = fx["anns"][0]["segmentation"][0], fx["anns"][1]["segmentation"][0]
    np.testing.assert_array_equal(wheel, _poly(a1, a2))  # both wheels in one object
    np.testing.assert_array_equal(lid, _poly(fx["anns"][3]["segmentation"][0]))
    assert s.objects[1].category == "car"
    assert s.objects[2].category in ("car wheel", "wheel of the car")
    assert s.objects[3].category in ("trash can lid", "lid of the trash can")
    assert s.objects[2].category in s.turns[2].text and s.turns[3].seg_objects == [2]


def test_pascal_part_reads_vlpart_json(tmp_path):
    fx = build_pascal_part(tmp_path)
    (s,) = [x.validate(check_frames=True) for x in get_source("pascal_part").samples(tmp_path, "train")]
    assert s.objects[1].category in ("person hair", "hair of the person")
    np.testing.assert_array_equal(masks.decode(s.objects[2].masks[0]), _poly(fx["anns"][1]["segmentation"][0]))


def test_parts_malformed_json_raises_naming_field(tmp_path):
    build_pascal_part(tmp_path)
    p = tmp_path / "train.json"
    data = json.loads(p.read_text())
    del data["categories"]
    (tmp_path / "val.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="categories"):
        get_source("pascal_part").items(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="paco_lvis_v1_val.json"):
        get_source("paco_lvis").items(tmp_path, "val")
