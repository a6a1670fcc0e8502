"""Osprey-724K converters on fixtures in the release's JSON format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_image import H, W, build_osprey, rect_mask
from pycocotools import mask as mask_utils

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RejectedSample
from pixelqa.prompt_format import MEM, REF, SEG


def _region1() -> np.ndarray:
    rle = mask_utils.frPyObjects([[2, 2, 12, 2, 12, 10, 2, 10]], H, W)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def test_osprey_conversation_tags_memory_and_masks(tmp_path):
    build_osprey(tmp_path, broken_record=True)
    src = get_source("osprey_conversation")
    out = list(src.samples(tmp_path, "train"))
    samples = [s.validate(check_frames=True) for s in out if not isinstance(s, RejectedSample)]
    assert [s.key for s in samples] == ["0", "2"]
    # record 1 names a region that does not exist: a counted reject naming the file and the record
    (bad,) = [s for s in out if isinstance(s, RejectedSample)]
    assert bad.key == "1" and "osprey_conversation.json[1]: region 3 but only 2 annotations" in bad.reason
    s = samples[0]
    assert s.task == "region_qa" and s.meta == {"id": 101, "file_name": "COCO_train2014_000000000009.jpg"}
    assert [t.text for t in s.turns] == [
        "What is [1] doing next to [2]?",
        "The person in [1] is sitting.",
        "And [2]?",
        "It sleeps.",
    ]
    assert s.turns[0].memory_objects == [1, 2] and all(not t.memory_objects for t in s.turns[1:])
    np.testing.assert_array_equal(masks.decode(s.objects[1].masks[0]), _region1())
    np.testing.assert_array_equal(masks.decode(s.objects[2].masks[0]), rect_mask(16, 8, 30, 20))
    assert not any(tok in t.text for t in s.turns for tok in (REF, MEM, SEG, "<image>"))
    # the image is found under train2017 by the id part of the 2014-style name
    assert s.media.frames[0] == (tmp_path / "coco/train2017/000000000009.jpg").read_bytes()
    short = samples[1]
    assert len(short.turns) == 2 and sorted(short.objects) == [2] and short.turns[0].memory_objects == [2]


def test_osprey_detail_description_and_pos_neg(tmp_path):
    build_osprey(tmp_path)
    (d,) = [s.validate() for s in get_source("osprey_detail_description").samples(tmp_path, "train")]
    assert d.task == "region_caption" and len(d.turns) == 4
    assert "[1]" in d.turns[0].text and d.turns[1].text == "A man in a red shirt."
    assert "[2]" in d.turns[2].text and d.turns[3].text == "A sleeping dog."
    assert d.turns[0].memory_objects == [1, 2]
    (p,) = [s.validate() for s in get_source("osprey_pos_neg").samples(tmp_path, "train")]
    assert [t.text for t in p.turns] == ["Is [1] a cat?", "No"] and sorted(p.objects) == [1]
    np.testing.assert_array_equal(masks.decode(p.objects[1].masks[0]), _region1())


def test_osprey_missing_field_and_file(tmp_path):
    build_osprey(tmp_path)
    path = tmp_path / "Osprey-724K" / "osprey_conversation.json"
    data = json.loads(path.read_text())
    del data[0]["conversations"]
    bad = tmp_path / "bad"
    (bad / "Osprey-724K").mkdir(parents=True)
    (bad / "Osprey-724K" / "osprey_conversation.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="conversations"):
        list(get_source("osprey_conversation").convert(bad, "train", 0))
    with pytest.raises(FileNotFoundError, match="osprey_short_form.json"):
        get_source("osprey_short_form").items(tmp_path, "train")
    data[0]["conversations"] = [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "<region1>"}]
    (bad / "Osprey-724K" / "osprey_conversation.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="alternating"):
        list(get_source("osprey_conversation").convert(bad, "train", 0))


def test_osprey_bad_regions_are_counted_rejects(tmp_path):
    build_osprey(tmp_path, broken_record=True)
    path = tmp_path / "Osprey-724K" / "osprey_conversation.json"
    data = json.loads(path.read_text())
    data[0]["annotation"] = [
        {"segmentation": [[40.0, 30.0, 50.0, 30.0, 50.0, 40.0]]},  # wholly outside the 32x24 image
        data[0]["annotation"][1],
    ]
    data[2]["annotation"] = [data[2]["annotation"][0], {"segmentation": [[3.0, 3.0, 3.0, 3.0, 3.0, 3.0]]}]  # empty
    data[1]["conversations"] = [{"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A cat."}]
    path.write_text(json.dumps(data))
    out = list(get_source("osprey_conversation").samples(tmp_path, "train"))
    assert all(isinstance(s, RejectedSample) for s in out) and [s.key for s in out] == ["0", "1", "2"]
    reasons = [s.reason for s in out]
    assert "osprey_conversation.json[0].annotation[0].segmentation: region outside the image" in reasons[0]
    assert "osprey_conversation.json[1]: mentions no region" in reasons[1]
    assert "osprey_conversation.json[2].annotation[1] (<region2>): empty region" in reasons[2]


def test_osprey_size_mismatch_is_a_reject_with_the_record_key(tmp_path):
    from pixelqa.data.shards import build_shards

    build_osprey(tmp_path)
    path = tmp_path / "Osprey-724K" / "osprey_conversation.json"
    data = json.loads(path.read_text())
    data[0]["height"] = H + 5  # the image is H x W
    path.write_text(json.dumps(data))
    (r,) = get_source("osprey_conversation").convert(tmp_path, "train", 0)
    assert isinstance(r, RejectedSample) and r.key == "0"
    assert f"osprey_conversation.json[0]: got height/width ({H + 5}, {W}), expected the image size ({H}, {W})" in (
        r.reason
    )
    assert "COCO_train2014_000000000009.jpg" in r.reason
    m = build_shards("osprey_conversation", tmp_path, tmp_path / "out", on_error="skip", progress=False)
    (rej,) = m["rejects"]
    assert rej["key"] == "0" and rej["offset"] == 0 and "osprey_conversation.json[0]" in rej["reason"]
