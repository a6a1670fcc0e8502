"""The referring-VOS converters (Ref-YouTube-VOS, Ref-DAVIS17, MeViS, ReVOS, LV-VIS) on fixtures in the real formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_video import (
    H,
    W,
    box_mask,
    build_mask_dict_vos,
    build_palette_vos,
    build_repacked_pickle_vos,
    build_revos,
    rgb_frames,
)

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RecordError, RejectedSample, load_card
from pixelqa.data.schema import decode_frame
from pixelqa.data.shards import build_shards
from pixelqa.prompt_format import SEG


def convert_all(name: str, root, split: str) -> list:
    """Every sample of a split through the Source API (items + convert), validated."""
    src = get_source(name)
    out = []
    for item in src.items(root, split):
        for s in src.convert(root, split, item):
            out.append(s.validate(check_frames=True))
    return out


def check_target(sample, truth_frames: dict) -> None:
    """The target object's masks are exactly the drawn ones, on exactly the annotated frames."""
    got = sample.objects[1].masks
    assert sorted(got) == sorted(truth_frames)
    for t, m in truth_frames.items():
        np.testing.assert_array_equal(masks.decode(got[t]), m)


def test_ref_youtube_vos_palette_pngs(tmp_path):
    truth = build_palette_vos(tmp_path, "train")
    samples = convert_all("ref_youtube_vos", tmp_path, "train")
    assert len(samples) == 3
    by = {(s.meta["video"], s.meta["exp_id"]): s for s in samples}
    assert set(by) == set(truth)
    for k, s in by.items():
        check_target(s, truth[k])
        assert s.task == "rvos" and s.media.kind == "video"
        assert s.turns[1].text.count(SEG) == 1 and s.turns[1].seg_objects == [1]
        assert s.meta["expression"] in s.turns[0].text
    a = by[("vidA", "1")]
    assert a.meta["obj_ids"] == ["2"] and a.media.frame_ids == ["00000", "00005", "00010"]
    assert 1 not in a.objects[1].masks  # frame without a PNG stays unannotated
    assert not masks.decode(a.objects[1].masks[2]).any()  # object 2 left the scene on frame 2
    # Frames are the JPEG files byte for byte, in order.
    raw = (tmp_path / "train" / "JPEGImages" / "vidA" / "00005.jpg").read_bytes()
    assert a.media.frames[1] == raw
    assert decode_frame(a.media.frames[0]).shape == (H, W, 3)
    # Deterministic: a second pass gives identical records.
    again = convert_all("ref_youtube_vos", tmp_path, "train")
    assert [s.to_record()["json"] for s in again] == [s.to_record()["json"] for s in samples]


def test_ref_youtube_vos_valid_has_unannotated_target(tmp_path):
    build_palette_vos(tmp_path, "valid", with_pngs=False)
    samples = convert_all("ref_youtube_vos", tmp_path, "valid")
    assert len(samples) == 3 and all(s.objects[1].masks == {} and not s.meta["has_masks"] for s in samples)


def test_ref_youtube_vos_unipixel_pickle(tmp_path):
    truth = build_palette_vos(tmp_path, "train", with_pngs=False, pickle_masks=True)
    # The re-pack has no PNGs: the pickle is the only mask source.
    samples = convert_all("ref_youtube_vos", tmp_path, "train")
    for s in samples:
        check_target(s, truth[(s.meta["video"], s.meta["exp_id"])])


def test_ref_davis17_annotation_sets(tmp_path):
    truth = build_palette_vos(tmp_path, "valid", layout="davis")
    samples = convert_all("ref_davis17", tmp_path, "valid")
    assert len(samples) == 12  # (2 + 1 objects) x 4 expressions
    for s in samples:
        check_target(s, truth[(s.meta["video"], s.meta["exp_id"])])
        pos = int(s.meta["exp_id"])
        assert s.meta["annotation_set"] == pos % 4 and s.meta["object_index"] == pos // 4
        assert s.meta["obj_ids"] == [str(pos // 4 + 1)]


def test_mevis_union_and_no_target(tmp_path):
    truth = build_mask_dict_vos(
        tmp_path,
        tmp_path / "valid_u" / "meta_expressions.json",
        tmp_path / "valid_u" / "mask_dict.json",
        tmp_path / "valid_u" / "JPEGImages",
    )
    samples = convert_all("mevis", tmp_path, "valid_u")
    assert len(samples) == 8  # evaluation splits keep the no-target expressions
    for s in samples:
        check_target(s, truth[(s.meta["video"], s.meta["exp_id"])])
    both = next(s for s in samples if s.meta["video"] == "v1" and s.meta["exp_id"] == "2")
    np.testing.assert_array_equal(masks.decode(both.objects[1].masks[1]), box_mask(1, 1) | box_mask(1, 2))
    none = next(s for s in samples if s.meta["exp_id"] == "3")
    assert none.meta["no_target"] and all(masks.area(r) == 0 for r in none.objects[1].masks.values())


def test_mevis_train_skips_no_target_and_valid_has_no_masks(tmp_path):
    build_mask_dict_vos(
        tmp_path,
        tmp_path / "train" / "meta_expressions.json",
        tmp_path / "train" / "mask_dict.json",
        tmp_path / "train" / "JPEGImages",
    )
    assert len(convert_all("mevis", tmp_path, "train")) == 6
    build_mask_dict_vos(tmp_path, tmp_path / "valid" / "meta_expressions.json", None, tmp_path / "valid" / "JPEGImages")
    valid = convert_all("mevis", tmp_path, "valid")
    assert len(valid) == 8 and all(s.objects[1].masks == {} for s in valid)


def test_revos_types_and_foreground(tmp_path):
    truth = build_revos(tmp_path)
    train = convert_all("revos", tmp_path, "train")
    assert [s.meta["exp_id"] for s in train] == ["0", "1"]  # the no-object expression is skipped in train
    valid = convert_all("revos", tmp_path, "valid")
    assert len(valid) == 3
    by = {s.meta["exp_id"]: s for s in valid}
    for s in valid:
        check_target(s, truth[("v1", s.meta["exp_id"])])
        assert s.task == "reason_vos"
        assert len(s.meta["foreground_rles"]) == 3
    assert by["0"].meta["expression_type"] == "referring" and by["1"].meta["expression_type"] == "reasoning"
    assert by["1"].meta["type_id"] == 1 and by["2"].meta["no_target"] and not by["0"].meta["no_target"]
    assert "Which box enters the scene late?" in by["1"].turns[0].text
    np.testing.assert_array_equal(masks.decode(by["0"].meta["foreground_rles"][2]), box_mask(2, 1) | box_mask(2, 2))


def test_lvvis_class_names(tmp_path):
    exps = {"0": {"exp": "sewing_machine", "obj_id": [0, 1], "anno_id": ["__A__", "__B__"]}}
    build_mask_dict_vos(
        tmp_path,
        tmp_path / "train" / "meta_expressions.json",
        tmp_path / "train" / "mask_dict.json",
        tmp_path / "train" / "JPEGImages",
        exps,
        ("v1",),
    )
    (s,) = convert_all("lvvis", tmp_path, "train")
    assert s.meta["category"] == "sewing_machine" and "sewing machine" in s.turns[0].text


def test_malformed_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta_expressions.json"):
        get_source("mevis").items(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        get_source("mevis").items(tmp_path, "test")
    meta = tmp_path / "train" / "meta_expressions.json"
    build_mask_dict_vos(tmp_path, meta, tmp_path / "train" / "mask_dict.json", tmp_path / "train" / "JPEGImages")
    # A mask list one frame short must be named, with the expression.
    md = json.loads((tmp_path / "train" / "mask_dict.json").read_text())
    md["0"] = md["0"][:2]
    (tmp_path / "train" / "mask_dict.json").write_text(json.dumps(md))
    src = get_source("mevis")
    # Only that expression's sample is rejected, naming the meta file, the record and the mask dict.
    out = list(src.convert(tmp_path, "train", "v1"))
    bad = [s for s in out if isinstance(s, RejectedSample)]
    exps = json.loads(meta.read_text())["videos"]["v1"]["expressions"]
    uses_anno_0 = [f"v1-{e}" for e, x in exps.items() if "0" in [str(a) for a in x.get("anno_id", [])]]
    assert [s.key for s in bad] == uses_anno_0 and len(uses_anno_0) < len(exps)
    assert "meta_expressions.json: videos['v1'].expressions['0']" in bad[0].reason
    assert "mask_dict.json" in bad[0].reason and "2 masks, expected one per frame (3)" in bad[0].reason
    with pytest.raises(RecordError, match="expected one per frame"):
        bad[0].validate()
    good = [s.validate(check_frames=True) for s in out if not isinstance(s, RejectedSample)]
    assert good and all(s.meta["video"] == "v1" for s in good)
    # A missing frame file rejects every expression of its video, each naming the frame file.
    (tmp_path / "train" / "JPEGImages" / "v2" / "00001.jpg").unlink()
    out = list(src.convert(tmp_path, "train", "v2"))
    assert out and all(isinstance(s, RejectedSample) and "00001.jpg" in s.reason for s in out)


def test_fixture_frames_are_random_enough():
    # Guards the fixture itself: different seeds give different frames (so byte equality above means something).
    a, b = rgb_frames(1, seed=0)[0], rgb_frames(1, seed=1)[0]
    assert a.shape == (H, W, 3) and not np.array_equal(a, b)


def test_revos_train_crops_tao_videos(tmp_path):
    exps = {
        "0": {"exp": "the first box", "obj_id": [0], "anno_id": ["__A__"], "type_id": 0},
        "1": {"exp": "the late box", "obj_id": [1], "anno_id": ["__B__"], "type_id": 0},
    }
    truth = build_mask_dict_vos(
        tmp_path,
        tmp_path / "meta_expressions_train_.json",
        tmp_path / "mask_dict.json",
        tmp_path / "JPEGImages",
        exps,
        ("TAO/t1",),
    )
    a, b = convert_all("revos", tmp_path, "train")
    assert a.media.frame_ids == ["00000", "00001", "00002"]
    assert b.media.frame_ids == ["00001", "00002"]  # object b appears on frame 1: the span starts there
    raw = (tmp_path / "JPEGImages" / "TAO" / "t1" / "00001.jpg").read_bytes()
    assert b.media.frames[0] == raw
    for t in (0, 1):
        np.testing.assert_array_equal(masks.decode(b.objects[1].masks[t]), truth[("TAO/t1", "1")][t + 1])


def test_lvvis_release_ytvis_format(tmp_path):
    from fixtures_video import coco_rle, write_jpegs, write_json

    names = ["v9/00000.jpg", "v9/00005.jpg"]
    write_jpegs(tmp_path / "train" / "JPEGImages" / "v9", ["00000", "00005"], rgb_frames(2, seed=9))
    anns = [
        {"id": 1, "video_id": 9, "category_id": 4, "segmentations": [coco_rle(box_mask(0, 1)), None]},
        {"id": 2, "video_id": 9, "category_id": 4, "segmentations": [None, coco_rle(box_mask(1, 2))]},
        {
            "id": 3,
            "video_id": 9,
            "category_id": 7,
            "segmentations": [coco_rle(box_mask(0, 2)), coco_rle(box_mask(1, 2))],
        },
    ]
    write_json(
        tmp_path / "train_instances.json",
        {
            "videos": [{"id": 9, "file_names": names, "height": H, "width": W, "length": 2}],
            "annotations": anns,
            "categories": [{"id": 4, "name": "sewing_machine"}, {"id": 7, "name": "cat"}],
        },
    )
    machine, cat = convert_all("lvvis", tmp_path, "train")
    assert machine.meta["category"] == "sewing_machine" and "sewing machine" in machine.turns[0].text
    np.testing.assert_array_equal(masks.decode(machine.objects[1].masks[0]), box_mask(0, 1))
    np.testing.assert_array_equal(masks.decode(machine.objects[1].masks[1]), box_mask(1, 2))
    assert cat.meta["expression"] == "cat" and machine.media.frame_ids == names


def test_ref_youtube_vos_train_without_masks_is_an_error(tmp_path):
    build_palette_vos(tmp_path, "train", with_pngs=False)
    with pytest.raises(FileNotFoundError, match="mask_dict.pkl"):
        convert_all("ref_youtube_vos", tmp_path, "train")


@pytest.mark.parametrize(
    ("source", "dataset", "split"), [("ref_davis17", "davis", "valid"), ("ref_youtube_vos", "ytvos", "train")]
)
def test_repacked_mask_dict_pkl_is_numbered_over_sorted_ids(tmp_path, source, dataset, split):
    truth = build_repacked_pickle_vos(tmp_path, dataset, split)
    # Guard on the fixture: every expression has its own mask, so a mis-numbered pickle entry cannot pass.
    flat = [m.tobytes() for m in truth.values()]
    assert len(set(flat)) == len(flat) == 14
    samples = convert_all(source, tmp_path, split)
    assert {(s.meta["video"], s.meta["exp_id"]) for s in samples} == set(truth)
    for s in samples:
        check_target(s, {0: truth[(s.meta["video"], s.meta["exp_id"])], 1: truth[(s.meta["video"], s.meta["exp_id"])]})
    by = {(s.meta["video"], s.meta["exp_id"]): s for s in samples}
    # alpaca sorts first (2 expressions); within zebra "10" and "11" sort before "2".
    assert [by[("zebra", e)].meta["mask_index"] for e in ("0", "1", "10", "11", "2", "9")] == [2, 3, 4, 5, 6, 13]
    assert 'sorted expression ids compared as strings ("10" before "2")' in load_card(source).notes
    # The JSON position would give zebra/10 the mask of another expression: the check above would fail on it.
    assert not np.array_equal(truth[("zebra", "10")], truth[("zebra", "2")])


def test_rejected_expressions_are_counted_in_the_manifest(tmp_path):
    build_repacked_pickle_vos(tmp_path, "davis", "valid")
    meta_path = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["zebra"]["frames"].append("00010")  # the pickle's mask lists are now one frame short for zebra
    frames = tmp_path / "DAVIS" / "JPEGImages" / "480p" / "zebra"
    (frames / "00010.jpg").write_bytes((frames / "00005.jpg").read_bytes())
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"zebra.*expected one per frame"):
        build_shards("ref_davis17", tmp_path, tmp_path / "fail", split="valid", progress=False)
    manifest = build_shards("ref_davis17", tmp_path, tmp_path / "out", split="valid", on_error="skip", progress=False)
    assert manifest["num_samples"] == 2 and manifest["num_rejects"] == 12
    keys = sorted(r["key"] for r in manifest["rejects"])
    assert keys == sorted(f"zebra-{e}" for e in range(12))
    assert all(
        "expected one per frame (3)" in r["reason"] and "mask_dict.pkl" in r["reason"] for r in manifest["rejects"]
    )
