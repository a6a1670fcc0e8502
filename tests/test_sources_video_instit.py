"""Inst-IT converters (image short captions, video QA, QA-memory) on fixtures in the release's JSON format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_video import box_mask, build_instit, coco_rle, option_letter, prefill_texts, write_json

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import SkippedSample
from pixelqa.data.shards import build_shards
from pixelqa.prompt_format import REF, SEG, parse_prefill


def convert_all(name, root, split="train"):
    """Every sample of a split, validated (skipped records, which hold nothing to ask, left out)."""
    src = get_source(name)
    out = (s for item in src.items(root, split) for s in src.convert(root, split, item))
    return [s.validate(check_frames=True) for s in out if not isinstance(s, SkippedSample)]


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


def test_qa_memory_released_one_round(tmp_path):
    build_instit(tmp_path)
    m0, m1 = convert_all("instit_qa_memory", tmp_path)
    u, a = m1.turns  # one round: no turn answering the question with memory
    x = option_letter(u.text)
    assert x in "ABCD"
    body = f"How do [1] {REF} and [2] {REF} differ?\nOptions:\n({x}) [2] is lower than [1]."
    assert u.text in prefill_texts(body) and not u.memory_objects
    assert a.text == f"[1] {SEG} [2] {SEG}" == m1.answer and a.seg_objects == [1, 2]
    assert [p.object_id for p in m1.prompts] == [1, 2] and m1.prompts[1].frame == 1  # first visible frame
    x0 = option_letter(m0.turns[0].text)
    assert m0.turns[0].text in prefill_texts(f"What does [1] {REF} do at <1>?\nOptions:\n({x0}) [1] waits.")
    _, again = convert_all("instit_qa_memory", tmp_path)
    assert again.turns[0].text == u.text  # letter and template are fixed by the sample key
    _, two = convert_all("instit_qa_memory_two_round", tmp_path)
    assert two.turns[0].text not in prefill_texts(body)  # the check rejects the other form's request


def test_qa_memory_released_refs_in_textual_order(tmp_path):
    build_instit(tmp_path)
    path = tmp_path / "inst_it_dataset_video_21k_w_mask.json"
    entries = json.loads(path.read_text())
    entries[0]["question_answer_pairs"] = [
        {"question": "Is [2] below [1]?", "answer": "Yes."},
        {"question": "What is [1] next to?", "answer": "[1] is next to [2]."},  # [2] only in the answer
    ]
    write_json(path, entries)
    m0, m1 = convert_all("instit_qa_memory", tmp_path)
    x0, x1 = option_letter(m0.turns[0].text), option_letter(m1.turns[0].text)
    assert m0.turns[0].text in prefill_texts(f"Is [2] {REF} below [1] {REF}?\nOptions:\n({x0}) Yes.")
    assert m0.turns[1].text == f"[2] {SEG} [1] {SEG}" and m0.turns[1].seg_objects == [2, 1]
    assert [p.object_id for p in m0.prompts] == [2, 1]
    np.testing.assert_array_equal(masks.decode(m0.prompts[0].rle), box_mask(1, 2))  # [2] first visible on frame 1
    assert m1.turns[0].text in prefill_texts(f"What is [1] {REF} next to?\nOptions:\n({x1}) [1] is next to [2] {REF}.")
    assert m1.turns[1].seg_objects == [1, 2] and [p.object_id for p in m1.prompts] == [1, 2]
    two0, _ = convert_all("instit_qa_memory_two_round", tmp_path)
    assert two0.turns[1].seg_objects == [1, 2]  # ours kept ascending ids: the check above tells the forms apart


def test_qa_memory_two_round(tmp_path):
    build_instit(tmp_path)
    _, m1 = convert_all("instit_qa_memory_two_round", tmp_path)
    u0, a0, u1, a1 = m1.turns
    assert u0.text in prefill_texts(f"How do [1] {REF} and [2] {REF} differ?")
    assert parse_prefill(a0.text) == [1, 2] and a0.seg_objects == [1, 2]
    assert u1.text == "How do [1] and [2] differ?" and u1.memory_objects == [1, 2]
    assert a1.text == m1.answer == "[2] is lower than [1]."
    assert [p.object_id for p in m1.prompts] == [1, 2] and m1.prompts[1].frame == 1  # first visible frame


def test_missing_masks_named(tmp_path):
    build_instit(tmp_path)
    write_json(tmp_path / "inst_it_dataset_image_51k_w_mask.json", [{"image_id": "x", "image_path": "a/b.jpg"}])

    with pytest.raises(ValueError, match="missing 'instance_level_caption'"):
        convert_all("instit_image_short_caption", tmp_path)


def test_image_instances_without_caption_or_mask_are_counted(tmp_path):
    build_instit(tmp_path)
    path = tmp_path / "inst_it_dataset_image_51k_w_mask.json"
    (e,) = json.loads(path.read_text())
    e["instance_level_caption"]["3"] = {"short": "a ghost", "long": "..."}
    e["segmentations"]["3"] = {"mask": coco_rle(np.zeros_like(box_mask(0, 1)))}
    write_json(path, [e])
    # an instance with no short caption holds nothing to ask (skipped, never fatal); an empty mask is damage
    m = build_shards("instit_image_short_caption", tmp_path, tmp_path / "out", on_error="skip", progress=False)
    assert m["num_samples"] == 1
    assert [r["key"] for r in m["skipped"]] == ["img1-2"] and [r["key"] for r in m["rejects"]] == ["img1-3"]
    assert "inst_it_dataset_image_51k_w_mask.json[0].instance_level_caption['2']" in m["skipped"][0]["reason"]
    assert "segmentations['3']: empty mask" in m["rejects"][0]["reason"]


@pytest.mark.parametrize("name", ["instit_video_qa", "instit_qa_memory"])
def test_video_qa_without_instance_or_mask_is_counted(tmp_path, name):
    build_instit(tmp_path)
    path = tmp_path / "inst_it_dataset_video_21k_w_mask.json"
    (e,) = json.loads(path.read_text())
    e["question_answer_pairs"] += [
        {"question": "What is [5] doing?", "answer": "Nothing."},  # no mask of instance 5 on any frame
        {"question": "Is [0] there?", "answer": "Yes."},  # ids start from 1
    ]
    write_json(path, [e])
    m = build_shards(name, tmp_path, tmp_path / "out", on_error="skip", progress=False)
    assert m["num_samples"] == 2 and m["num_samples"] + m["num_rejects"] + m["num_skipped"] == 5  # every pair
    (skip,) = m["skipped"]
    assert skip["key"] == "vid1-2" and "question_answer_pairs[2]: names no instance" in skip["reason"]
    assert [r["key"] for r in m["rejects"]] == ["vid1-3", "vid1-4"]
    unmasked, zero = (r["reason"] for r in m["rejects"])
    assert "inst_it_dataset_video_21k_w_mask.json[0].question_answer_pairs[3]" in unmasked
    assert "names ['[5]'] with no mask on any frame of vid1" in unmasked
    assert "question_answer_pairs[4]: names [0]" in zero
