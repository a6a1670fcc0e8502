"""The refer family converters (RefCOCO, RefCOCO+, RefCOCOg, RefClef) on fixtures in the release's format."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from fixtures_image import H, W, build_refer, rect_mask
from pycocotools import mask as mask_utils

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RejectedSample
from pixelqa.data.schema import decode_frame
from pixelqa.prompt_format import REF, SEG


def _poly_truth(x1, y1, x2, y2) -> np.ndarray:
    """The refer toolkit's own decoding of a rectangle polygon (pycocotools frPyObjects + decode)."""
    rle = mask_utils.frPyObjects([[x1, y1, x2, y1, x2, y2, x1, y2]], H, W)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def test_refcoco_train_groups_expressions_per_image(tmp_path):
    fx = build_refer(tmp_path)
    src = get_source("refcoco")
    assert src.items(tmp_path, "train") == [1]
    samples = list(src.samples(tmp_path, "train"))
    assert len(samples) == 1
    s = samples[0].validate(check_frames=True)
    assert (s.source, s.split, s.task, s.key) == ("refcoco", "train", "res", "1")
    # the JPEG bytes are carried over unchanged
    assert s.media.frames[0] == (fx["image_dir"] / fx["files"][1]).read_bytes()
    assert s.media.size == (H, W) and s.media.kind == "image"
    # two refs -> two objects; three sentences -> three turn pairs, one <|seg|> each
    assert sorted(s.objects) == [1, 2]
    np.testing.assert_array_equal(masks.decode(s.objects[1].masks[0]), _poly_truth(2, 3, 10, 8))
    np.testing.assert_array_equal(masks.decode(s.objects[2].masks[0]), _poly_truth(15, 10, 30, 20))
    assert s.objects[1].category == "person" and s.objects[2].category == "dog"
    assert len(s.turns) == 6
    assert [t.seg_objects for t in s.turns[1::2]] == [[1], [1], [2]]
    assert "man on the left" in s.turns[0].text and "guy in red" in s.turns[2].text
    assert "brown dog" in s.turns[4].text and "the the" not in s.turns[4].text  # article dropped
    assert all(t.text.count(SEG) == 1 for t in s.turns[1::2]) and not any(REF in t.text for t in s.turns)
    assert s.meta["independent_turns"] is True
    assert [e["sent_id"] for e in s.meta["expressions"]] == [1000, 1001, 1010]
    assert [e["object_id"] for e in s.meta["expressions"]] == [1, 1, 2]


def test_refcoco_eval_split_one_sample_per_expression_with_box(tmp_path):
    build_refer(tmp_path)
    src = get_source("refcoco")
    val = [s.validate() for s in src.samples(tmp_path, "val")]
    assert [s.key for s in val] == ["2000"]
    s = val[0]
    assert s.meta["ref_id"] == 200 and s.meta["ann_id"] == 21 and s.meta["sent_id"] == 2000
    assert s.meta["expression"] == "top left person"
    assert s.meta["box_xyxy"] == [0.0, 0.0, 8.0, 8.0]
    np.testing.assert_array_equal(masks.decode(s.objects[1].masks[0]), _poly_truth(0, 0, 8, 8))
    test_b = list(src.samples(tmp_path, "testB"))
    assert [x.meta["ref_id"] for x in test_b] == [201]
    assert list(src.samples(tmp_path, "testA")) == []


def test_refcocog_umd_and_refcoco_plus_read_their_folders(tmp_path):
    build_refer(tmp_path, dataset="refcocog", split_by="umd")
    build_refer(tmp_path, dataset="refcoco+", split_by="unc")
    g = list(get_source("refcocog").samples(tmp_path, "train"))
    p = list(get_source("refcoco_plus").samples(tmp_path, "train"))
    assert len(g) == len(p) == 1
    assert g[0].source == "refcocog" and p[0].source == "refcoco_plus"
    # root may also be the dataset folder itself
    assert len(list(get_source("refcocog").samples(tmp_path / "refcocog", "train"))) == 1


def test_refclef_rle_list_segmentation_decodes_to_drawn_pixels(tmp_path):
    fx = build_refer(tmp_path, dataset="refclef")
    s = next(iter(get_source("refclef").samples(tmp_path, "train"))).validate(check_frames=True)
    for oid, aid in ((1, 11), (2, 12)):
        np.testing.assert_array_equal(masks.decode(s.objects[oid].masks[0]), rect_mask(*fx["rects"][aid]))
    assert s.meta["file_name"] == "25/images/25008.jpg"
    rgb = decode_frame(s.media.frames[0])
    assert rgb.shape == (H, W, 3)


def test_refer_missing_refs_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p"):
        get_source("refcoco").items(tmp_path, "train")


def test_refer_malformed_inputs_raise_clear_errors(tmp_path):
    build_refer(tmp_path)
    src = get_source("refcoco")
    with pytest.raises(ValueError, match="split"):
        src.items(tmp_path, "testC")
    # a ref pointing at an annotation that instances.json lacks
    refs_path = tmp_path / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    refs[0]["ann_id"] = 999
    broken = tmp_path / "broken"
    (broken / "refcoco").mkdir(parents=True)
    (broken / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (broken / "refcoco" / "instances.json").write_text((tmp_path / "refcoco" / "instances.json").read_text())
    (broken / "images").symlink_to(tmp_path / "images")
    out = list(src.samples(broken, "train"))  # that ref alone is a rejected sample naming the file and the ref
    (bad,) = [s for s in out if isinstance(s, RejectedSample)]
    assert "refs(unc).p ref_id" in bad.reason and "ann_id 999 is not in instances.json" in bad.reason
    with pytest.raises(ValueError, match="ann_id 999"):
        bad.validate()


def test_refer_crowded_image_keeps_all_expressions_in_one_sample(tmp_path):
    build_refer(tmp_path)
    refs_path = tmp_path / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    first = next(r for r in refs if r["split"] == "train")
    # 40 expressions on one object of one image: more than any per-sample cap would keep
    first["sentences"] = [{"sent_id": 5000 + i, "sent": f"thing {i}", "raw": f"thing {i}"} for i in range(40)]
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    samples = [s.validate() for s in get_source("refcoco").samples(tmp_path, "train")]
    (s,) = [s for s in samples if s.meta["image_id"] == first["image_id"]]
    sent_ids = [e["sent_id"] for e in s.meta["expressions"]]
    assert set(range(5000, 5040)) <= set(sent_ids) and len(s.turns) == 2 * len(sent_ids)
    assert len({x.meta["image_id"] for x in samples}) == len(samples)  # one sample per image


def test_refer_empty_ref_is_a_counted_reject_and_the_image_keeps_the_others(tmp_path):
    build_refer(tmp_path)
    inst_path = tmp_path / "refcoco" / "instances.json"
    inst = json.loads(inst_path.read_text())
    refs = pickle.loads((tmp_path / "refcoco" / "refs(unc).p").read_bytes())
    first = next(r for r in refs if r["split"] == "train")
    ann = next(a for a in inst["annotations"] if a["id"] == first["ann_id"])
    ann["segmentation"] = [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]  # a degenerate polygon: no pixel
    inst_path.write_text(json.dumps(inst))
    out = list(get_source("refcoco").samples(tmp_path, "train"))
    (bad,) = [s for s in out if isinstance(s, RejectedSample)]
    assert bad.key == f"{first['image_id']}-ref-{first['ref_id']}"
    assert "refs(unc).p ref_id" in bad.reason and "empty region" in bad.reason
    kept = [s.validate() for s in out if not isinstance(s, RejectedSample)]
    same = [s for s in kept if s.meta["image_id"] == first["image_id"]]
    assert all(e["ref_id"] != first["ref_id"] for s in same for e in s.meta["expressions"])


def _add_val_sentence(root) -> None:
    """A second expression on ref 200 (val, image 2): the val split then holds two samples on that image."""
    refs_path = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    ref = next(r for r in refs if r["ref_id"] == 200)
    ref["sentences"].append({"sent_id": 2001, "sent": "person at the top", "raw": "", "tokens": []})
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))


def test_refer_missing_image_is_one_reject_per_lost_sample(tmp_path):
    from pixelqa.data.shards import build_shards

    fx = build_refer(tmp_path)
    _add_val_sentence(tmp_path)
    (fx["image_dir"] / fx["files"][2]).unlink()  # image 2 carries both val expressions
    (fx["image_dir"] / fx["files"][1]).unlink()  # image 1 carries the one grouped train sample
    val = build_shards("refcoco", tmp_path, tmp_path / "out", split="val", on_error="skip", progress=False)
    assert val["num_samples"] == 0 and val["num_rejects"] == 2  # samples written + rejects = the split's 2
    assert [r["key"] for r in val["rejects"]] == ["2000", "2001"]
    for r, sid in zip(val["rejects"], (2000, 2001), strict=True):
        assert "image 2 (COCO_train2014_000000000002.jpg)" in r["reason"] and "image file not found" in r["reason"]
        assert f"ref_id 200 sent_id {sid}" in r["reason"]
    train = build_shards("refcoco", tmp_path, tmp_path / "out", split="train", on_error="skip", progress=False)
    assert train["num_samples"] == 0 and train["num_rejects"] == 1  # train groups the image's expressions
    (r,) = train["rejects"]
    assert r["key"] == "1" and "COCO_train2014_000000000001.jpg" in r["reason"] and "[100, 101]" in r["reason"]


def test_refer_image_missing_from_instances_and_bad_sentence_count_their_samples(tmp_path):
    build_refer(tmp_path)
    _add_val_sentence(tmp_path)
    inst_path = tmp_path / "refcoco" / "instances.json"
    inst = json.loads(inst_path.read_text())
    inst["images"] = [im for im in inst["images"] if im["id"] != 2]
    inst_path.write_text(json.dumps(inst))
    out = list(get_source("refcoco").samples(tmp_path, "val"))
    assert all(isinstance(s, RejectedSample) for s in out) and [s.key for s in out] == ["2000", "2001"]
    assert all("image id 2 of the refs is not in 'images'" in s.reason for s in out)

    fresh = tmp_path / "fresh"
    build_refer(fresh)
    _add_val_sentence(fresh)
    refs_path = fresh / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    next(r for r in refs if r["ref_id"] == 200)["sentences"][0]["sent"] = ""  # one expression without text
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    out = list(get_source("refcoco").samples(fresh, "val"))
    (bad,) = [s for s in out if isinstance(s, RejectedSample)]
    assert bad.key == "2000" and "ref_id 200" in bad.reason and "non-empty expression" in bad.reason
    assert [s.validate().key for s in out if not isinstance(s, RejectedSample)] == ["2001"]
