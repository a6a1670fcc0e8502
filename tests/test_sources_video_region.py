"""VideoRefer-700K, VideoRefer-Bench and PixelQA converters on fixtures in the real JSON + mp4 formats."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from fixtures_video import (
    box_mask,
    build_videorefer_700k,
    build_videorefer_bench,
    build_videorefer_bench_tags_and_defects,
    option_letter,
    prefill_texts,
    videorefer_annotation,
    write_json,
)

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.collate import Collator
from pixelqa.data.registry import RejectedSample
from pixelqa.data.shards import build_shards
from pixelqa.data.sources.pixelqa_bench import center_point, prompt_kinds
from pixelqa.data.sources.videorefer import check_form, localize, option_line, single_object_id
from pixelqa.prompt_format import MEM, PREFILL_TEMPLATES, REF, SEG, parse_prefill
from tests.tiny_processor import tiny_processor


def convert_all(name, root, split):
    """Every sample of a split, validated."""
    src = get_source(name)
    return [s.validate(check_frames=True) for item in src.items(root, split) for s in src.convert(root, split, item)]


def frame_pos(sample, source_frame: int) -> int:
    """Position of a source frame index among the sample's frames."""
    return sample.media.frame_ids.index(source_frame)


def test_short_caption_prompt_and_frames(tmp_path):
    build_videorefer_700k(tmp_path)
    (s,) = convert_all("videorefer_short_caption", tmp_path, "train")  # s1 dropped (ratio 0.1 < 0.3)
    assert s.task == "region_caption" and s.answer == "A small box."
    assert s.turns[0].text == f"What is {REF} in the video?" and "<video>" not in s.turns[0].text
    assert s.media.frame_ids == list(range(10))  # 10 frames <= 16 context frames: all of them
    t = frame_pos(s, 3)
    assert sorted(s.objects[0].masks) == [t]  # ids from 0, as the released data numbers them
    (p,) = s.prompts
    assert p.type == "mask" and p.frame == t and p.object_id == 0
    np.testing.assert_array_equal(masks.decode(p.rle), box_mask(3, 1))
    # The frame behind the prompt really is source frame 3 (flat grey 10 + 24 * 3).
    assert round((s.decode_frames([t])[0].mean() - 10) / 24) == 3


def the_id(sample) -> int:
    """The id of a single-object sample's one object."""
    (k,) = sample.objects
    return k


def test_detailed_caption_and_qa_use_memory(tmp_path):
    build_videorefer_700k(tmp_path)
    entries = json.loads((tmp_path / "videorefer-detailed-caption-125k.json").read_text())
    write_json(tmp_path / "videorefer-detailed-caption-125k.json", [{**entries[0], "id": f"d{i}"} for i in range(6)])
    ds = convert_all("videorefer_detailed_caption", tmp_path, "train")
    for d in ds:
        k = the_id(d)  # released: the lone object is [k], k random in 0..15 (here fixed by the sample key)
        assert 0 <= k < 16 and d.turns[0].text == f"Describe [{k}] in detail." and not d.prompts
        assert d.turns[0].memory_objects == [k] and set(re.findall(r"\[(\d+)\]", d.turns[0].text)) == {str(k)}
        for f in (2, 4, 6):
            np.testing.assert_array_equal(masks.decode(d.objects[k].masks[frame_pos(d, f)]), box_mask(f, 1))
    ks = [the_id(d) for d in ds]
    assert ks == [the_id(d) for d in convert_all("videorefer_detailed_caption", tmp_path, "train")]
    assert len(set(ks)) > 1 and set(ks) != {0}, ks  # spread over the keys, not always [0]
    q0, q1 = convert_all("videorefer_qa", tmp_path, "train")
    # As released, the "There are 2 objects ..." line is dropped: the memory prefix lists the objects.
    assert q0.turns[0].text == "Does [0] move faster than [1]?"
    assert q0.turns[0].memory_objects == [0, 1] and q0.answer == "No, [0] moves as fast as [1]."
    np.testing.assert_array_equal(masks.decode(q0.objects[1].masks[frame_pos(q0, 8)]), box_mask(8, 2))
    k = the_id(q1)  # a lone object under a bare <region>: [k], k in 0..15 by the sample key, as released
    assert k == single_object_id(q1.key) and q1.turns[0].text == f"What colour is [{k}]?"
    assert q1.turns[0].memory_objects == [k]


def test_qa_drops_the_object_list_once_under_the_memory_prefix(tmp_path):
    build_videorefer_700k(tmp_path)
    q0, _ = convert_all("videorefer_qa", tmp_path, "train")
    b = Collator(tiny_processor())([q0])
    (text,) = (t.replace("<|video_pad|>", "") for t in processor_texts(b))
    assert "There are" not in text and "Does [0] move faster than [1]?" in text
    assert len(re.findall(r"\n\[0\]: <\d+>-<\d+>", text)) == 1  # the objects are listed once: by the prefix


def test_qa_single_object_ids_spread_by_key(tmp_path):
    single_object_qa(tmp_path)
    _, *singles, tagged = convert_all("videorefer_qa", tmp_path, "train")
    ks = [the_id(s) for s in singles]
    assert len(set(ks)) > 1 and set(ks) != {0}, ks  # not always [0]
    assert ks == [the_id(s) for s in convert_all("videorefer_qa", tmp_path, "train")[1:-1]]
    mem = convert_all("videorefer_qa_memory", tmp_path, "train")[1:-1]
    assert ks == [the_id(m) for m in mem]  # the memory pre-fill sample of the same entry names it the same way
    for s, k in zip(singles, ks):
        assert s.turns[0].text == f"What colour is [{k}]?" and s.turns[0].memory_objects == [k]
        np.testing.assert_array_equal(masks.decode(s.objects[k].masks[frame_pos(s, 7)]), box_mask(7, 1))
    assert the_id(tagged) == 3 and tagged.turns[0].text == "What colour is [3]?"  # <objectK> tags keep K


def test_qa_naming_an_unannotated_object_is_a_reject(tmp_path):
    build_videorefer_700k(tmp_path)
    entries = json.loads((tmp_path / "videorefer-qa-75k.json").read_text())
    intro = "<video>\nThere are 2 objects in the video: <object0><region>, <object1><region>."
    bad = {**entries[0], "id": "unknown", "conversations": [{"value": intro + "\nIs <object2> near <object0>?"}, {}]}
    bad["conversations"][1] = {"from": "gpt", "value": "No."}
    write_json(tmp_path / "videorefer-qa-75k.json", [entries[0], bad])
    m = build_shards("videorefer_qa", tmp_path, tmp_path / "out", split="train", on_error="skip", progress=False)
    assert m["num_samples"] == 1 and [r["key"] for r in m["rejects"]] == ["qa-unknown"]
    (reason,) = (r["reason"] for r in m["rejects"])
    assert "videorefer-qa-75k.json[1]" in reason and "names objects [2], expected only the annotated [0, 1]" in reason


def test_qa_memory_released_one_round(tmp_path):
    build_videorefer_700k(tmp_path)
    (m,) = convert_all("videorefer_qa_memory", tmp_path, "train")  # q1 has one annotated frame: dropped
    assert m.task == "memory_qa"
    u, a = m.turns  # one round: no turn answering the question with memory
    x = option_letter(u.text)
    assert x in "ABCD"
    body = (
        f"There are 2 objects in the video: [0] {REF}, [1] {REF}.\nDoes [0] move faster than [1]?"
        f"\nOptions:\n({x}) No, [0] moves as fast as [1]."
    )
    assert u.text in prefill_texts(body) and not u.memory_objects
    assert a.text == f"[0] {SEG} [1] {SEG}" == m.answer and a.seg_objects == [0, 1]
    assert [p.object_id for p in m.prompts] == [0, 1] and all(p.type == "mask" for p in m.prompts)
    assert m.prompts[1].frame == frame_pos(m, 4)  # object 2 first visible on source frame 4
    (again,) = convert_all("videorefer_qa_memory", tmp_path, "train")
    assert again.turns[0].text == u.text  # letter and template are fixed by the sample key
    # As released, its frames are the annotated ones only (the collate's 8 are drawn among them).
    assert m.media.frame_ids == [0, 4, 8] == m.meta["annotated_frames"]  # the fixture annotates 0, 4 and 8
    assert all(any(f in o.masks for o in m.objects.values()) for f in range(m.media.num_frames))
    # The check rejects the other form's request (no option line).
    (two,) = convert_all("videorefer_qa_memory_two_round", tmp_path, "train")
    assert two.turns[0].text not in prefill_texts(body)
    assert two.media.frame_ids == list(range(10))  # ours keeps the region sources' context frames (all 10 here)


def test_qa_memory_released_follows_textual_order(tmp_path):
    build_videorefer_700k(tmp_path)
    entries = json.loads((tmp_path / "videorefer-qa-75k.json").read_text())
    entries[0]["conversations"][0]["value"] = (
        "<video>\nThere are 2 objects in the video: <object1><region>, <object0><region>."
        "\nIs <object1> left of <object0>?"
    )
    entries[0]["conversations"][1]["value"] = "Yes."
    write_json(tmp_path / "videorefer-qa-75k.json", entries)
    (m,) = convert_all("videorefer_qa_memory", tmp_path, "train")
    x = option_letter(m.turns[0].text)
    body = f"There are 2 objects in the video: [1] {REF}, [0] {REF}.\nIs [1] left of [0]?\nOptions:\n({x}) Yes."
    assert m.turns[0].text in prefill_texts(body)
    assert m.turns[1].text == f"[1] {SEG} [0] {SEG}" and m.turns[1].seg_objects == [1, 0]
    assert [p.object_id for p in m.prompts] == [1, 0]  # the first annotation is [1]: drawn as box_mask(f, 1)
    np.testing.assert_array_equal(masks.decode(m.prompts[0].rle), box_mask(0, 1))
    (two,) = convert_all("videorefer_qa_memory_two_round", tmp_path, "train")
    assert two.turns[1].seg_objects == [0, 1]  # ours kept ascending ids: the check above tells the forms apart


def test_option_letters_cover_a_to_d_by_key():
    letters = [option_letter(option_line("yes", f"qa-{i}")) for i in range(200)]
    assert set(letters) == set("ABCD")
    assert letters == [option_letter(option_line("yes", f"qa-{i}")) for i in range(200)]


def test_qa_memory_two_round_prefill_then_answer(tmp_path):
    build_videorefer_700k(tmp_path)
    (m,) = convert_all("videorefer_qa_memory_two_round", tmp_path, "train")
    assert m.task == "memory_qa"
    u0, a0, u1, a1 = m.turns
    pre = f"There are 2 objects in the video: [0] {REF}, [1] {REF}.\nDoes [0] move faster than [1]?"
    assert u0.text in prefill_texts(pre) and "Options" not in u0.text
    assert parse_prefill(a0.text) == [0, 1] and a0.seg_objects == [0, 1] and a0.text.count(SEG) == 2
    assert u1.text == "There are 2 objects in the video: [0], [1].\nDoes [0] move faster than [1]?"
    assert u1.memory_objects == [0, 1] and a1.text == m.answer == "No, [0] moves as fast as [1]."
    assert [p.object_id for p in m.prompts] == [0, 1] and all(p.type == "mask" for p in m.prompts)
    assert m.prompts[1].frame == frame_pos(m, 4)
    with pytest.raises(ValueError, match="form: got 'three_round'"):
        check_form("three_round", "videorefer_qa_memory")


def single_object_qa(tmp_path, n: int = 6) -> None:
    """The VideoRefer QA fixture with q1 (one object under a bare <region>) annotated on frames 5 and 7 (so that
    memory pre-filling keeps it) and repeated as q1..qn, plus q9 tagging its lone object <object3>."""
    build_videorefer_700k(tmp_path)
    entries = json.loads((tmp_path / "videorefer-qa-75k.json").read_text())
    single = {**entries[1], "annotation": videorefer_annotation({1: [5, 7]})}
    tagged = {**single, "id": "q9", "conversations": [dict(c) for c in single["conversations"]]}
    tagged["conversations"][0]["value"] = "<video>\nWhat colour is <object3><region>?"
    rows = [entries[0]] + [{**single, "id": f"q{i}"} for i in range(1, n + 1)] + [tagged]
    write_json(tmp_path / "videorefer-qa-75k.json", rows)


def test_qa_memory_single_object_random_id(tmp_path):
    single_object_qa(tmp_path)
    m0, *singles, tagged = convert_all("videorefer_qa_memory", tmp_path, "train")
    assert sorted(m0.objects) == [0, 1] and m0.turns[1].text == f"[0] {SEG} [1] {SEG}"  # multi-object: [N] kept
    assert the_id(tagged) == 3 and tagged.turns[1].text == f"[3] {SEG}"  # <objectK> tags keep K
    for s in singles:
        u, a = s.turns
        k = the_id(s)
        x = option_letter(u.text)
        assert 0 <= k < 16
        assert u.text in prefill_texts(f"What colour is [{k}] {REF}?\nOptions:\n({x}) Grey.")
        assert a.text == s.answer == f"[{k}] {SEG}" and a.seg_objects == [k]
        assert [p.object_id for p in s.prompts] == [k] and s.prompts[0].frame == frame_pos(s, 5)
        assert set(re.findall(r"\[(\d+)\]", u.text + a.text)) == {str(k)}  # the same k in every place
        np.testing.assert_array_equal(masks.decode(s.objects[k].masks[frame_pos(s, 7)]), box_mask(7, 1))
        if k != 0:  # the check tells the drawn id from the old fixed [0]
            assert u.text not in prefill_texts(f"What colour is [0] {REF}?\nOptions:\n({x}) Grey.")
    ks = [the_id(s) for s in singles]
    assert ks == [the_id(s) for s in convert_all("videorefer_qa_memory", tmp_path, "train")[1:-1]]
    assert len(set(ks)) > 1 and set(ks) != {0}, ks  # spread over the rows, not always [0]
    # The two-round form names the same entry's object by the same k (same sample key).
    for s, two in zip(singles, convert_all("videorefer_qa_memory_two_round", tmp_path, "train")[1:-1]):
        k = the_id(s)
        assert the_id(two) == k and f"[{k}] {REF}" in two.turns[0].text and two.turns[1].seg_objects == [k]
        assert two.turns[2].text == f"What colour is [{k}]?" and two.turns[2].memory_objects == [k]


def test_single_object_id_spread_and_salt():
    keys = [f"qa-v{i}" for i in range(1000)]
    ids = [single_object_id(k) for k in keys]
    assert set(ids) == set(range(16)) and ids == [single_object_id(k) for k in keys]
    # Salted: the id does not move in step with the option letter or the template (every pair occurs).
    letters = [option_letter(option_line("yes", k)) for k in keys]
    templates = [localize("q", k) for k in keys]
    assert len(set(zip(letters, ids))) == 4 * 16 and len(set(zip(templates, ids))) == len(PREFILL_TEMPLATES) * 16


def test_single_object_ids_collate(tmp_path):
    single_object_qa(tmp_path, n=1)
    _, s, _ = convert_all("videorefer_qa_memory", tmp_path, "train")
    build_videorefer_700k(tmp_path / "d")
    (d,) = convert_all("videorefer_detailed_caption", tmp_path / "d", "train")
    ks, kd = the_id(s), the_id(d)
    assert ks != 0 and kd != 0  # these fixture keys draw ids other than 0, so the checks below can tell
    b = Collator(tiny_processor())([s, d])
    text_s, text_d = (b_text.replace("<|video_pad|>", "") for b_text in processor_texts(b))
    assert f"[{ks}] {REF}" in text_s and f"assistant\n[{ks}] {SEG}<|im_end|>" in text_s
    assert b.seg_object_ids == [[ks], []] and [p.object_id for p in b.prompts[0]] == [ks]
    assert re.search(rf"\n\[{kd}\]: <\d+>-<\d+> {re.escape(MEM)}", text_d) and "[0]:" not in text_d
    assert f"Describe [{kd}] in detail." in text_d and {m.object_id for m in b.memory[1]} == {kd} and b.memory[1]


def processor_texts(batch) -> list[str]:
    """The decoded input ids of each sample of a batch."""
    tok = tiny_processor().tokenizer
    return [tok.decode(ids) for ids in batch.input_ids]


def test_bench_q_single_and_multi_frame(tmp_path):
    build_videorefer_bench(tmp_path)
    single = convert_all("videorefer_bench_q", tmp_path, "single_frame")
    multi = convert_all("videorefer_bench_q", tmp_path, "multi_frame")
    s, m = single[0], multi[0]
    assert s.task == "mcq" and s.answer == "A" and s.choices == ["[0]", "[1]", "Neither", "Both"]
    assert s.turns[0].text.startswith("[0] and [1] are boxes. Which is higher, [0] or [1]?\nOptions:\n(A) [0]")
    assert s.turns[0].memory_objects == [0, 1] and s.turns[1].text == "A"
    kf = frame_pos(s, 4)
    assert s.meta["key_frame"] == kf and s.meta["question_type"] == "Relationship Question"
    assert sorted(s.objects[0].masks) == [kf] and sorted(m.objects[0].masks) == [frame_pos(m, f) for f in (0, 4, 8)]
    assert single[1].answer == "B" and single[1].choices == ["Circle", "Rectangle"]
    # single-frame mode keeps one mask, but the benchmark's annotated frames (the LLM samples among them) all count
    union = sorted({f for t in m.objects.values() for f in t.masks})
    assert s.meta["annotated_frames"] == m.meta["annotated_frames"] == union and len(union) > 1


def test_bench_d(tmp_path):
    build_videorefer_bench(tmp_path)
    (d,) = convert_all("videorefer_bench_d", tmp_path, "multi_frame")  # found under videos/Panda-70M-part
    assert d.answer == "A box slides right." and d.turns[0].memory_objects == [0]
    # the request names the object the memory text names, as the official request does ([1] before)
    assert d.turns[0].text == "Please give a detailed description of the highlighted object [0] in the video."
    assert sorted(d.objects[0].masks) == [frame_pos(d, 3), frame_pos(d, 7)]


def test_pixelqa_point_box_mix(tmp_path):
    build_videorefer_bench(tmp_path)
    pts = convert_all("pixelqa", tmp_path, "point")
    boxes = convert_all("pixelqa", tmp_path, "box")
    s = pts[0]
    assert s.task == "pixelqa" and s.answer == "A" and len(s.prompts) == 2
    kf = frame_pos(s, 4)
    for p, obj in zip(s.prompts, (1, 2)):
        assert p.type == "point" and p.frame == kf
        m = box_mask(4, obj)
        assert m[int(p.coords[1]), int(p.coords[0])]  # inside the object
    # Hand-computed: a 5x6 box at rows 2..6, cols 6..11 -> the centre row 4, first of the two centre columns 8.
    assert s.prompts[0].coords == [8.5, 4.5]
    b = boxes[0].prompts[1]
    assert b.type == "box" and b.coords == [
        16.0,
        10.0,
        22.0,
        15.0,
    ]  # object 2, frame 4: x 16..21, y 10..14 (exclusive edges)
    # Targets: all annotated frames; pre-fill then MCQ with memory.
    assert sorted(s.objects[1].masks) == [frame_pos(s, 4), frame_pos(s, 8)]
    assert parse_prefill(s.turns[1].text) == [0, 1] and s.turns[2].memory_objects == [0, 1]
    assert "Options:" in s.turns[0].text and s.turns[3].text == "A"
    mix = convert_all("pixelqa", tmp_path, "mix")
    assert sorted(mix[0].meta["prompt_kinds"]) == ["box", "point"]  # 2 objects: exactly one point
    assert [p.type for p in mix[0].prompts] == mix[0].meta["prompt_kinds"]
    again = convert_all("pixelqa", tmp_path, "mix")
    assert [a.meta["prompt_kinds"] for a in again] == [x.meta["prompt_kinds"] for x in mix]


def test_center_point_matches_distance_transform_definition():
    m = np.zeros((9, 12), bool)
    m[1:8, 2:5] = True  # thin vertical bar: the deepest pixels lie on its middle column
    m[3:6, 5:11] = True  # and a horizontal arm
    x, y = center_point(m)
    # Brute force: the pixel whose nearest background pixel (border = background) is farthest.
    bg = [(i, j) for i in range(-1, 10) for j in range(-1, 13) if not (0 <= i < 9 and 0 <= j < 12 and m[i, j])]
    best = max(
        (min((i - a) ** 2 + (j - b) ** 2 for a, b in bg), -i, -j) for i in range(9) for j in range(12) if m[i, j]
    )
    assert (int(y), int(x)) == (-best[1], -best[2])
    assert (
        prompt_kinds(3, "mix", "k") == prompt_kinds(3, "mix", "k") and prompt_kinds(3, "mix", "k").count("point") == 2
    )
    with pytest.raises(ValueError, match="protocol"):
        prompt_kinds(1, "scribble", "k")
    assert cv2 is not None


def test_malformed_region_markers(tmp_path):
    from fixtures_video import videorefer_annotation

    build_videorefer_700k(tmp_path)
    conv = [{"from": "human", "value": "What is <region>?"}, {"from": "gpt", "value": "?"}]
    cases = [
        ([{"1": {"segmentation": None}}, {"2": {}}], r"annotation\[1\]\[2\]: no 'segmentation'"),
        (videorefer_annotation({1: [1], 2: [2]}), r"1 <region> markers, expected one per annotated object \(2\)"),
    ]
    for annotation, message in cases:
        write_json(
            tmp_path / "videorefer-qa-75k.json",
            [{"id": "x", "video": "clipA.mp4", "annotation": annotation, "conversations": conv}],
        )
        with pytest.raises(ValueError, match=message):
            convert_all("videorefer_qa", tmp_path, "train")


def test_pixelqa_through_the_shard_builder(tmp_path):
    from pixelqa.data.schema import Sample
    from pixelqa.data.shards import build_shards, iter_records, list_shards

    build_videorefer_bench(tmp_path / "raw")
    direct = convert_all("pixelqa", tmp_path / "raw", "mix")
    manifest = build_shards("pixelqa", tmp_path / "raw", tmp_path / "out", split="mix", workers=2, progress=False)
    assert manifest["num_samples"] == 2 and manifest["num_rejects"] == 0
    back = [Sample.from_record(r) for r in iter_records(list_shards(tmp_path / "out" / "pixelqa" / "mix"))]
    assert [b.to_json() for b in back] == [d.to_json() for d in direct]


def test_unipixel_repack_without_inline_masks(tmp_path):
    import json

    from fixtures_video import coco_rle

    build_videorefer_700k(tmp_path)
    entries = json.loads((tmp_path / "videorefer-qa-75k.json").read_text())
    (tmp_path / "videorefer-qa-75k.json").unlink()
    for idx, e in enumerate(entries):
        # Re-pack: [object][annotated frame, sorted][RLE]; the JSON keeps only the frame keys.
        cells = [
            [[coco_rle(box_mask(int(f), k + 1))] for f in sorted(obj, key=int)] for k, obj in enumerate(e["annotation"])
        ]
        write_json(tmp_path / "masks_qa" / f"{idx}.json", cells)
        e["annotation"] = [{f: {} for f in obj} for obj in e["annotation"]]
    write_json(tmp_path / "videorefer-qa-75k-wo-masks.json", entries)
    q0, _ = convert_all("videorefer_qa", tmp_path, "train")
    np.testing.assert_array_equal(masks.decode(q0.objects[1].masks[frame_pos(q0, 8)]), box_mask(8, 2))
    assert sorted(q0.objects[0].masks) == [frame_pos(q0, 0), frame_pos(q0, 4)]


def test_qa_ytb_vos_layout_one_frame_many_objects(tmp_path):
    from fixtures_video import coco_rle

    from pixelqa.data.sources.videorefer import parse_regions

    ann = [{"3": [{"segmentation": coco_rle(box_mask(3, 1))}, {"segmentation": coco_rle(box_mask(3, 2))}]}]
    regions = parse_regions(ann, "qa[0]")
    assert [r.object_id for r in regions] == [1, 2] and all(list(r.masks) == [3] for r in regions)
    np.testing.assert_array_equal(masks.decode(regions[1].masks[3]), box_mask(3, 2))


def convert_raw(name, root, split):
    """Every sample of a split as the converter yields it, rejected ones included (not validated)."""
    src = get_source(name)
    return [s for item in src.items(root, split) for s in src.convert(root, split, item)]


@pytest.mark.parametrize(("source", "split"), [("videorefer_bench_q", "single_frame"), ("pixelqa", "box")])
def test_object_tags_pair_with_annotations_in_order_of_appearance(tmp_path, source, split):
    build_videorefer_bench_tags_and_defects(tmp_path)
    out = convert_raw(source, tmp_path, split)
    single, double = out[0].validate(check_frames=True), out[1].validate(check_frames=True)
    # <object3> with a single annotation: that annotation is object [3] (the released numbering), whatever the index.
    assert sorted(single.objects) == [3]
    np.testing.assert_array_equal(masks.decode(single.objects[3].masks[frame_pos(single, 4)]), box_mask(4, 1))
    assert "What is [3]" in single.turns[-2].text and single.turns[-2].memory_objects == [3]
    # <object2> first, <object0> second: annotation 0 -> [2], annotation 1 -> [0]; later mentions keep the names.
    assert sorted(double.objects) == [0, 2]
    np.testing.assert_array_equal(masks.decode(double.objects[2].masks[frame_pos(double, 4)]), box_mask(4, 1))
    np.testing.assert_array_equal(masks.decode(double.objects[0].masks[frame_pos(double, 4)]), box_mask(4, 2))
    assert "Is [2] left of [0]? Compare [2] and [0]." in double.turns[-2].text
    if source == "pixelqa":  # the box prompt of [2] comes from annotation 0's mask
        (box3,) = [p for p in double.prompts if p.object_id == 2]
        assert box3.coords == list(masks.to_box(masks.encode(box_mask(4, 1))))


def test_bad_regions_are_counted_rejects_naming_file_and_entry(tmp_path):
    defects = build_videorefer_bench_tags_and_defects(tmp_path)
    json_path = str(tmp_path / "VideoRefer-Bench-Q.json")
    out = convert_raw("videorefer_bench_q", tmp_path, "single_frame")
    bad = {i: s for i, s in enumerate(out) if isinstance(s, RejectedSample)}
    assert sorted(bad) == sorted(defects)
    for i, s in bad.items():
        assert s.reason.startswith(f"{json_path}[{i}]") and defects[i] in s.reason, s.reason
    assert all(out[i].validate(check_frames=True) for i in range(len(out)) if i not in bad)
    # multi-frame memory does not need the key frame's mask: entry 2 is fine there.
    multi = convert_raw("videorefer_bench_q", tmp_path, "multi_frame")
    assert sorted(i for i, s in enumerate(multi) if isinstance(s, RejectedSample)) == [3, 4, 5]
    manifest = build_shards(
        "pixelqa", tmp_path, tmp_path / "out", split="point", on_error="skip", workers=1, progress=False
    )
    assert manifest["num_samples"] == 2 and manifest["num_rejects"] == 4
    assert sorted(int(r["key"].split("-")[1]) for r in manifest["rejects"]) == [2, 3, 4, 5]
    assert all(json_path in r["reason"] for r in manifest["rejects"])


def test_training_qa_pairs_tags_in_order(tmp_path):
    build_videorefer_700k(tmp_path)
    import json

    entries = json.loads((tmp_path / "videorefer-qa-75k.json").read_text())
    entries[0]["conversations"][0]["value"] = "<video>\nThere is <object3><region>.\nIs <object3> moving?"
    entries[0]["conversations"][1]["value"] = "Yes, <object3> moves."
    entries[0]["annotation"] = entries[0]["annotation"][1:]  # one object: the annotation drawn as box_mask(f, 2)
    write_json(tmp_path / "videorefer-qa-75k.json", entries)
    q0, _ = convert_all("videorefer_qa", tmp_path, "train")
    assert sorted(q0.objects) == [3] and q0.answer == "Yes, [3] moves."
    np.testing.assert_array_equal(masks.decode(q0.objects[3].masks[frame_pos(q0, 8)]), box_mask(8, 2))


# ------------------------------------------------------------------------------------ training frame sampling

LONG_FRAMES = 60  # longer than the 16 stored context frames, so the sampler has more frames than it keeps
# Source frames each object is annotated on (VideoRefer "annotation"), by entry id; the truth the tests check.
LONG_ANNOTATED = {
    "d_one": {0: [30]},  # detailed caption, one annotated frame: single-frame mode
    "d_four": {0: [10, 20, 30, 40]},  # detailed caption, 4 annotated frames: multi-frame mode
    "q_sparse": {0: list(range(0, LONG_FRAMES, 4)), 1: [33]},  # QA: 16 annotated frames, object 1 on one only
    "q_one": {0: [7]},  # QA, one object on one frame: single-frame mode
}


def long_mask(t: int, obj: int) -> np.ndarray:
    """A box for object `obj` on source frame `t`: never empty on any of the 60 frames (box_mask leaves the frame)."""
    m = np.zeros((24, 32), dtype=bool)
    x0 = 1 + t % 20 + obj
    m[2 + 8 * obj : 6 + 8 * obj, x0 : x0 + 5] = True
    return m


def build_long_videorefer(root) -> None:
    """VideoRefer detailed-caption and QA JSONs over one 60-frame mp4, annotated as LONG_ANNOTATED."""
    from fixtures_video import coco_rle, write_mp4

    write_mp4(root / "videos" / "long.mp4", [np.full((24, 32, 3), 128, dtype=np.uint8)] * LONG_FRAMES)

    def entry(eid: str, question: str, answer: str) -> dict:
        ann = [
            {str(f): {"segmentation": coco_rle(long_mask(f, o))} for f in fr} for o, fr in LONG_ANNOTATED[eid].items()
        ]
        conv = [{"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": answer}]
        return {"id": eid, "video": "long.mp4", "annotation": ann, "conversations": conv}

    write_json(
        root / "videorefer-detailed-caption-125k.json",
        [entry("d_one", "Describe <region> in detail.", "A box."), entry("d_four", "Describe <region>.", "A box.")],
    )
    two = "There are 2 objects in the video: <object0><region>, <object1><region>.\nIs <object1> above <object0>?"
    write_json(
        root / "videorefer-qa-75k.json",
        [entry("q_sparse", two, "No, <object1> is below <object0>."), entry("q_one", "What is <region>?", "A box.")],
    )


@pytest.fixture(scope="module")
def long_region(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_videorefer")
    build_long_videorefer(root)
    out = {}
    for name in ("videorefer_detailed_caption", "videorefer_qa"):
        for s in convert_all(name, root, "train"):
            assert len(s.media.frame_ids) > 8  # annotated + 16 context frames are stored: the sampler must choose
            out[s.meta["id"]] = s
    return out


def annotated_of(sample) -> dict[int, tuple[int, list[int]]]:
    """Object id -> (annotation index, annotated source frames) of a converted sample (ids sort as annotations)."""
    return dict(zip(sorted(sample.objects), LONG_ANNOTATED[sample.meta["id"]].items()))


@pytest.mark.parametrize("eid", ["d_one", "d_four", "q_sparse", "q_one"])
def test_training_frames_keep_every_memory_object_visible(long_region, eid):
    from pixelqa.data.loader import subsample_frames

    s = long_region[eid]
    truth = annotated_of(s)
    assert sorted(s.turns[0].memory_objects) == sorted(truth)
    rng = np.random.default_rng(0)
    for draw in range(400):
        x = subsample_frames(s, 8, rng if draw else None)  # the first draw: evaluation's centres
        src = x.media.frame_ids
        for oid, (a, frames) in truth.items():
            kept = [f for f in src if f in frames]
            assert kept, f"{eid} draw {draw}: object {oid} (annotated on {frames}) not among frames {src}"
            for f in kept:  # and the memory sees it there: its real mask on that frame
                np.testing.assert_array_equal(masks.decode(x.objects[oid].masks[src.index(f)]), long_mask(f, a))


def test_training_frames_follow_the_released_modes(long_region):
    from pixelqa.data.loader import subsample_frames

    rng = np.random.default_rng(1)
    for eid in ("d_four", "q_sparse"):  # multi-frame mode: frames only among the annotated ones
        s = long_region[eid]
        union = sorted({f for fr in LONG_ANNOTATED[eid].values() for f in fr})
        seen = set()
        for _ in range(300):
            src = subsample_frames(s, 8, rng).media.frame_ids
            assert set(src) <= set(union) and len(src) == min(8, len(union)), (eid, src)
            seen.update(src)
        # the draw varies over the annotated frames (q_sparse: the forced frame 33 always displaces its neighbour 32)
        assert seen == set(union) if eid == "d_four" else len(seen) == len(union) - 1
    for eid in ("d_one", "q_one"):  # single-frame mode: over the whole stored video, the annotated frame forced in
        s = long_region[eid]
        (only,) = (f for fr in LONG_ANNOTATED[eid].values() for f in fr)
        seen = set()
        for _ in range(300):
            src = subsample_frames(s, 8, rng).media.frame_ids
            assert only in src and len(src) == 8
            seen.update(src)
        # context frames are drawn too: all stored frames but the forced frame's segment neighbour
        assert len(seen) == len(s.media.frame_ids) - 1 and {min(s.media.frame_ids), max(s.media.frame_ids)} <= seen


def test_memory_object_without_a_visible_mask_is_an_error(long_region):
    import copy

    from pixelqa.data.loader import subsample_frames

    s = copy.deepcopy(long_region["q_sparse"])
    h, w = s.media.size
    s.objects[1].masks = {f: masks.empty(h, w) for f in s.objects[1].masks}  # annotated, but empty everywhere
    with pytest.raises(ValueError, match=r"memory object 1 has no visible mask"):
        subsample_frames(s, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"memory object 1 has no visible mask"):
        subsample_frames(s, 64)  # not cut: still checked
