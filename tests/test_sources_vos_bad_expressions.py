"""A bad expression / referral of a referring-VOS video is one counted reject; the video's other ones are kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_video import build_mask_dict_vos, build_palette_vos, build_ref_sav_train, build_vicas

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RejectedSample
from pixelqa.data.shards import build_shards


def convert_video(name: str, root, split: str, item: str) -> tuple[list, list]:
    """(validated good samples, rejected samples) of one item, through the Source API."""
    out = list(get_source(name).convert(root, split, item))
    bad = [s for s in out if isinstance(s, RejectedSample)]
    good = [s.validate(check_frames=True) for s in out if not isinstance(s, RejectedSample)]
    return good, bad


def damage(meta_path, vid: str, bad: dict) -> None:
    """Replace expressions of `vid` in a meta_expressions JSON by the records in `bad`."""
    meta = json.loads(meta_path.read_text())
    meta["videos"][vid]["expressions"].update(bad)
    meta_path.write_text(json.dumps(meta))


def check_masks(sample, truth: dict) -> None:
    """The sample's target masks are exactly the fixture's."""
    got = sample.objects[1].masks
    assert sorted(got) == sorted(truth)
    for t, m in truth.items():
        np.testing.assert_array_equal(masks.decode(got[t]), m)


def test_ref_davis17_keeps_the_good_expressions_of_a_video(tmp_path):
    truth = build_palette_vos(tmp_path, "valid", layout="davis")  # vidA: 8 expressions, vidB: 4
    meta_path = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    damage(meta_path, "vidA", {"1": "garbage", "2": {"exp": "  ", "obj_id": "1"}})
    good, bad = convert_video("ref_davis17", tmp_path, "valid", "vidA")
    assert [s.key for s in bad] == ["vidA-1", "vidA-2"]
    assert "videos['vidA'].expressions['1']" in bad[0].reason and "expected a dict with 'exp'" in bad[0].reason
    assert "videos['vidA'].expressions['2']" in bad[1].reason and "expected non-empty text" in bad[1].reason
    # Every other expression survives, those after the bad ones included, with its own masks and position.
    assert [s.meta["exp_id"] for s in good] == ["0", "3", "4", "5", "6", "7"]
    for s in good:
        check_masks(s, truth[("vidA", s.meta["exp_id"])])
        pos = int(s.meta["exp_id"])
        assert (s.meta["annotation_set"], s.meta["object_index"]) == (pos % 4, pos // 4)
    # The build counts one reject per bad expression, naming it (not one anonymous reject for the video).
    manifest = build_shards("ref_davis17", tmp_path, tmp_path / "out", split="valid", on_error="skip", progress=False)
    assert manifest["num_samples"] == 10 and manifest["num_rejects"] == 2
    assert sorted((r["key"], r["offset"]) for r in manifest["rejects"]) == [("vidA-1", 1), ("vidA-2", 2)]


@pytest.mark.parametrize("source", ["ref_youtube_vos", "mevis"])
def test_sibling_converters_keep_the_good_expressions(tmp_path, source):
    if source == "ref_youtube_vos":
        truth = build_palette_vos(tmp_path, "train")  # vidA: expressions "0", "1"
        meta_path = tmp_path / "meta_expressions" / "train" / "meta_expressions.json"
        damage(meta_path, "vidA", {"0": {"exp": "", "obj_id": "1"}, "9": ["garbage"], "10": {"obj_id": "2"}})
        vid, kept = "vidA", ["1"]
    else:
        meta_path = tmp_path / "train" / "meta_expressions.json"
        truth = build_mask_dict_vos(
            tmp_path, meta_path, tmp_path / "train" / "mask_dict.json", meta_path.parent / "JPEGImages"
        )
        damage(meta_path, "v1", {"0": "garbage", "1": {"exp": None, "obj_id": [1], "anno_id": [1]}})
        vid, kept = "v1", ["2"]  # "3" refers to nothing: the train filter drops it (not damage)
    good, bad = convert_video(source, tmp_path, "train", vid)
    assert [s.meta["exp_id"] for s in good] == kept
    for s in good:
        check_masks(s, truth[(vid, s.meta["exp_id"])])
    expected_bad = ["0", "9", "10"] if source == "ref_youtube_vos" else ["0", "1"]
    assert [s.key for s in bad] == [f"{vid}-{e}" for e in expected_bad]
    assert all(f"videos[{vid!r}].expressions[{e!r}]" in s.reason for s, e in zip(bad, expected_bad))


def test_vicas_bad_referrals_are_rejected_one_by_one(tmp_path):
    truth = build_vicas(tmp_path)
    path = tmp_path / "annotations" / "v0.1" / "000007.json"
    ann = json.loads(path.read_text())
    good_ref = ann["object_referrals"][1]
    ann["object_referrals"] = [{"track_ids": [3]}, {"prompt": " ", "track_ids": [3]}, good_ref]
    path.write_text(json.dumps(ann))
    good, bad = convert_video("vicas", tmp_path, "train", "000007")
    assert [s.key for s in bad] == ["000007-0", "000007-1"]
    assert "object_referrals[0]" in bad[0].reason and "object_referrals[1]" in bad[1].reason
    assert "expected non-empty text" in bad[1].reason
    (s,) = good
    assert s.meta["exp_id"] == "2" and s.meta["expression"] == "all boxes"
    check_masks(s, truth["1"])


def test_ref_sav_bad_object_is_rejected_alone(tmp_path):
    truth = build_ref_sav_train(tmp_path)
    path = tmp_path / "Ref-SAV.json"
    data = json.loads(path.read_text())
    del data["sav_000001"]["objects"]["0"]["formated"]
    path.write_text(json.dumps(data))
    good, bad = convert_video("ref_sav", tmp_path, "train", "sav_000001")
    assert [s.key for s in bad] == ["sav_000001-0"] and "objects['0']" in bad[0].reason
    (s,) = good
    assert s.meta["expression"] == "The lower box, which vanishes briefly."
    check_masks(s, truth[2])
