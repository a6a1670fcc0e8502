"""Inst-IT converters (image short captions, video QA, QA-memory) on fixtures in the release's JSON format."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_video import box_mask, build_instit, write_json

from pixelqa.data import masks
from pixelqa.data.registry import get_source
from pixelqa.prompt_format import REF, parse_prefill


def convert_all(name, root, split="train"):
    """Every sample of a split, validated."""
    src = get_source(name)
    return [s.validate(check_frames=True) for item in src.items(root, split) for s in src.convert(root, split, item)]


def test_image_short_caption(tmp_path):
    build_instit(tmp_path)
    (s,) = convert_all("instit_image_short_caption", tmp_path)  # instance 2 has no short caption
    assert s.media.kind == "image" and s.answer == "a red box" and s.turns[0].text.count(REF) == 1
    (p,) = s.prompts
    assert p.type == "mask" and p.frame == 0 and p.object_id == 1
    np.testing.assert_array_equal(masks.decode(p.rle), box_mask(0, 1))
    assert s.meta == {"image_id": "img1", "instance_id": "1"}


def test_video_qa_memory_objects_and_frame_order(tmp_path):
    truth = build_instit(tmp_path)
    q0, q1 = convert_all("instit_video_qa", tmp_path)
    assert q0.media.frame_ids == ["1.png", "2.png", "10.png"] and q0.media.ext == "png"
    np.testing.assert_array_equal(q0.decode_frames([2])[0], truth["frames"][2])  # PNG: lossless, numeric order
    assert q0.turns[0].text == "What does [1] do at <1>?" and q0.turns[0].memory_objects == [1]  # slips repaired
    assert q1.turns[0].memory_objects == [1, 2] and q1.answer == "[2] is lower than [1]."
    # Instance 2 is annotated on every frame but not visible on frame 0.
    assert sorted(q1.objects[2].masks) == [0, 1, 2] and masks.area(q1.objects[2].masks[0]) == 0
    np.testing.assert_array_equal(masks.decode(q1.objects[2].masks[2]), box_mask(2, 2))
    assert q1.meta["keep_all_frames"] and q1.task == "region_qa"


def test_qa_memory(tmp_path):
    build_instit(tmp_path)
    _, m1 = convert_all("instit_qa_memory", tmp_path)
    assert "[1] " + REF in m1.turns[0].text and "[2] " + REF in m1.turns[0].text
    assert parse_prefill(m1.turns[1].text) == [1, 2] and m1.turns[1].seg_objects == [1, 2]
    assert m1.turns[2].memory_objects == [1, 2] and m1.turns[3].text == m1.answer
    assert [p.object_id for p in m1.prompts] == [1, 2] and m1.prompts[1].frame == 1  # first visible frame


def test_missing_masks_named(tmp_path):
    build_instit(tmp_path)
    write_json(tmp_path / "inst_it_dataset_image_51k_w_mask.json", [{"image_id": "x", "image_path": "a/b.jpg"}])

    with pytest.raises(ValueError, match="missing 'instance_level_caption'"):
        convert_all("instit_image_short_caption", tmp_path)
