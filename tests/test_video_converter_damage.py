"""Damaged raw video data is counted, never silently dropped or turned into wrong masks.

Each test builds a tiny raw dataset with the `fixtures_video` builders, damages it the way a broken download or a
bad record would, runs the converter (through the shard builder where the count is the point) and checks the
counted reject, or the masks against an independent decode (pycocotools / PIL).
"""

from __future__ import annotations

import io
import json
import shutil

import cv2
import numpy as np
import pytest
from fixtures_video import (
    H,
    W,
    box_mask,
    build_groundmore,
    build_instit,
    build_mask_dict_vos,
    build_palette_vos,
    build_ref_sav_train,
    build_vicas,
    coco_rle,
    flat_frames,
    videorefer_annotation,
    write_json,
    write_mp4,
    write_palette_png,
)
from PIL import Image
from pycocotools import mask as mask_utils

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RejectedSample
from pixelqa.data.shards import build_shards


def build(source: str, root, split: str, tmp_path) -> dict:
    """The manifest of a build that counts damage instead of stopping."""
    out = tmp_path / f"out-{source}-{split}"
    return build_shards(source, root, out, split=split, on_error="skip", progress=False)


def converted(source: str, root, split: str) -> list:
    """Every good sample of a split through the Source API (rejected and skipped records left out)."""
    src = get_source(source)
    out = [s for item in src.items(root, split) for s in src.convert(root, split, item)]
    return [s.validate(check_frames=True) for s in out if not isinstance(s, RejectedSample)]


def decode(rle: dict) -> np.ndarray:
    """An RLE decoded by pycocotools directly (not through pixelqa.data.masks)."""
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts}).astype(bool)


def grey(frame: bytes) -> float:
    """Mean grey level of an encoded frame, decoded by PIL."""
    return float(np.asarray(Image.open(io.BytesIO(frame)).convert("L")).mean())


def edit_json(path, change) -> None:
    """Rewrite a JSON file through `change(data)`."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------- 1, 4: palette-PNG referring VOS


@pytest.mark.parametrize(
    ("source", "layout", "split"), [("ref_youtube_vos", "ytvos", "train"), ("ref_davis17", "davis", "valid")]
)
def test_palette_expression_naming_an_unannotated_object_is_a_reject_in_training(tmp_path, source, layout, split):
    truth = build_palette_vos(tmp_path, split, layout=layout)
    meta = tmp_path / "meta_expressions" / split / "meta_expressions.json"
    edit_json(meta, lambda m: m["videos"]["vidA"]["expressions"].update({"99": {"exp": "a ghost", "obj_id": "9"}}))
    m = build(source, tmp_path, split, tmp_path)
    samples = converted(source, tmp_path, split)
    if split == "train":
        (r,) = m["rejects"]
        assert r["key"] == "vidA-99"
        assert f"{meta}: videos['vidA'].expressions['99']" in r["reason"]
        assert "obj_id ['9'] names objects [9] in no annotation PNG" in r["reason"]
        assert "(ids there: [1, 2])" in r["reason"]
    else:  # an evaluation split keeps it, empty on every annotated frame, as the release scores it
        assert m["num_rejects"] == 0
        (ghost,) = [s for s in samples if s.meta["exp_id"] == "99"]
        assert ghost.objects[1].masks and not any(decode(r).any() for r in ghost.objects[1].masks.values())
        samples = [s for s in samples if s is not ghost]
    # Every other expression is kept with its masks, the object absent from some frames included (vidA's object 2
    # is not on frame 2, and frame 1 has no PNG): only "on none of the video's frames" is damage.
    assert len(samples) == len(truth)
    for s in samples:
        want = truth[(s.meta["video"], s.meta["exp_id"])]
        assert sorted(s.objects[1].masks) == sorted(want)
        for t, mask in want.items():
            np.testing.assert_array_equal(decode(s.objects[1].masks[t]), mask)
    partly = [s for s in samples if s.meta["video"] == "vidA" and s.meta["obj_ids"] == ["2"]]
    assert partly and all(not decode(s.objects[1].masks[2]).any() for s in partly)


@pytest.mark.parametrize("gone", ["folder", "pngs"])
def test_palette_video_without_annotation_pngs_rejects_each_expression(tmp_path, gone):
    build_palette_vos(tmp_path, "train")
    ann = tmp_path / "train" / "Annotations" / "vidB"
    if gone == "folder":
        shutil.rmtree(ann)
    else:  # a partly extracted archive: the folder is there, the video's PNGs are not
        for p in ann.glob("*.png"):
            p.unlink()
    m = build("ref_youtube_vos", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 2 and [r["key"] for r in m["rejects"]] == ["vidB-0"]
    assert "videos['vidB'].expressions['0']" in m["rejects"][0]["reason"]
    assert f"no annotation PNG of the video's 2 frames in {ann}" in m["rejects"][0]["reason"]


def test_palette_valid_split_without_masks_is_not_damage(tmp_path):
    # Ref-YouTube-VOS valid ships no Annotations (server-scored): its expressions are kept, unannotated
    build_palette_vos(tmp_path, "valid", with_pngs=False)
    m = build("ref_youtube_vos", tmp_path, "valid", tmp_path)
    assert m["num_samples"] == 3 and m["num_rejects"] == 0


# ------------------------------------------------------------------------------- 1, 7, 8: ViCaS


def vicas_ann(root):
    """The fixture's one annotation file."""
    return root / "annotations" / "v0.1" / "000007.json"


def test_vicas_referral_naming_an_unknown_track_is_a_reject(tmp_path):
    truth = build_vicas(tmp_path)
    edit_json(vicas_ann(tmp_path), lambda d: d["object_referrals"][0].update(track_ids=[42]))
    m = build("vicas", tmp_path, "train", tmp_path)
    (r,) = m["rejects"]
    assert r["key"] == "000007-0" and f"{vicas_ann(tmp_path)}: object_referrals[0]" in r["reason"]
    assert (
        "track_ids [42] name [42] in no 'segmentations' entry" in r["reason"]
        and "(track ids there: [3, 5])" in r["reason"]
    )
    (s,) = converted("vicas", tmp_path, "train")
    for t, mask in truth["1"].items():
        np.testing.assert_array_equal(decode(s.objects[1].masks[t]), mask)
    # val keeps it, empty on every frame, as the benchmark scores every referral
    (tmp_path / "splits" / "v0.1" / "val.json").write_text("[7]")
    m = build("vicas", tmp_path, "val", tmp_path)
    assert m["num_rejects"] == 0 and m["num_samples"] == 2
    ghost = next(s for s in converted("vicas", tmp_path, "val") if s.key.endswith("-0"))
    assert ghost.objects[1].masks and not any(decode(r).any() for r in ghost.objects[1].masks.values())


def test_vicas_frames_in_frame_number_order(tmp_path):
    truth = build_vicas(tmp_path)
    # the JSON lists the frames backwards (and names the second without zero padding): time order is by number
    src = tmp_path / "video_frames" / "000007"
    (src / "00004.jpg").rename(src / "4.jpg")

    def reverse(d: dict) -> None:
        d["segmentations"][1]["filename"] = "4.jpg"
        d["segmentations"].reverse()

    edit_json(vicas_ann(tmp_path), reverse)
    first = (src / "00000.jpg").read_bytes()
    for s in converted("vicas", tmp_path, "train"):
        assert s.media.frame_ids == ["00000.jpg", "4.jpg"] and s.media.frames[0] == first
        for t, mask in truth[s.meta["exp_id"]].items():
            np.testing.assert_array_equal(decode(s.objects[1].masks[t]), mask)


def test_vicas_referral_without_tracks(tmp_path):
    build_vicas(tmp_path)
    edit_json(vicas_ann(tmp_path), lambda d: d["object_referrals"][0].update(track_ids=[]))
    # train: names no object, nothing to segment: counted as skipped, not written as an "absent everywhere" target
    m = build("vicas", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 1 and m["num_rejects"] == 0
    assert [r["key"] for r in m["skipped"]] == ["000007-0"] and "track_ids [] names no object" in m["skipped"][0][
        "reason"
    ]
    # val: the benchmark scores every referral, so it stays, with an empty target marked no_target
    write_json(tmp_path / "splits" / "v0.1" / "val.json", [7])
    s = next(s for s in converted("vicas", tmp_path, "val") if s.meta["exp_id"] == "0")
    assert s.meta["no_target"] is True and not any(decode(r).any() for r in s.objects[1].masks.values())


def test_vicas_missing_frame_rejects_each_referral(tmp_path):
    build_vicas(tmp_path)
    (tmp_path / "video_frames" / "000007" / "00004.jpg").unlink()
    m = build("vicas", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 0 and [r["key"] for r in m["rejects"]] == ["000007-0", "000007-1"]
    assert all("00004.jpg" in r["reason"] for r in m["rejects"])


# ------------------------------------------------------------------------------- 7: MeViS, GroundMoRe


def test_mevis_empty_frames_list_rejects_each_expression(tmp_path):
    meta = tmp_path / "train" / "meta_expressions.json"
    build_mask_dict_vos(tmp_path, meta, tmp_path / "train" / "mask_dict.json", tmp_path / "train" / "JPEGImages")
    edit_json(meta, lambda m: m["videos"]["v2"].update(frames=[]))
    m = build("mevis", tmp_path, "train", tmp_path)
    # v2's three expressions that name objects are lost, each counted with its key ("3" names nothing: the recipe
    # drops it in train whatever the frames)
    assert m["num_samples"] == 3 and [r["key"] for r in m["rejects"]] == ["v2-0", "v2-1", "v2-2"]
    assert all("videos['v2'].frames: got []" in r["reason"] for r in m["rejects"])


def test_groundmore_mask_of_another_size_rejects_each_question(tmp_path):
    build_groundmore(tmp_path)
    write_palette_png(tmp_path / "annotations" / "vid_0001" / "masks" / "frame3.png", np.ones((12, 16), np.uint8))
    m = build("groundmore", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 0 and [r["key"] for r in m["rejects"]] == ["vid_0001-q0", "vid_0001-q1"]
    assert all("frame3.png: size (12, 16), expected the frame size (24, 32)" in r["reason"] for r in m["rejects"])


def test_groundmore_bad_question_is_rejected_alone(tmp_path):
    labels = build_groundmore(tmp_path)
    path = tmp_path / "trainval_v2.json"
    edit_json(path, lambda d: d["videos"]["vid_0001"]["questions"]["q0"].update(obj_id="one"))
    m = build("groundmore", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 1 and [r["key"] for r in m["rejects"]] == ["vid_0001-q0"]
    assert "questions['q0']: obj_id 'one', expected comma-separated integers" in m["rejects"][0]["reason"]
    (s,) = converted("groundmore", tmp_path, "train")
    assert s.meta["question_id"] == "q1"
    np.testing.assert_array_equal(decode(s.objects[1].masks[0]), labels[1] > 0)


def test_groundmore_train_video_without_masks_rejects_each_question(tmp_path):
    build_groundmore(tmp_path)
    shutil.rmtree(tmp_path / "annotations" / "vid_0001" / "masks")
    m = build("groundmore", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 0 and [r["key"] for r in m["rejects"]] == ["vid_0001-q0", "vid_0001-q1"]
    assert all("no mask PNG in" in r["reason"] for r in m["rejects"])


# ------------------------------------------------------------------------------- 3: Inst-IT


INSTIT_SOURCES = ["instit_video_qa", "instit_qa_memory"]


@pytest.mark.parametrize("source", INSTIT_SOURCES)
def test_instit_missing_frame_rejects_each_qa_pair(tmp_path, source):
    build_instit(tmp_path)
    (tmp_path / "videos_raw" / "clips" / "vid1" / "2.png").unlink()
    m = build(source, tmp_path, "train", tmp_path)
    assert m["num_samples"] == 0 and [r["key"] for r in m["rejects"]] == ["vid1-0", "vid1-1"]
    assert all("segmentations name frames ['2.png']" in r["reason"] for r in m["rejects"])
    assert [r["key"] for r in m["skipped"]] == ["vid1-2"]  # names no instance: skipped, damaged video or not


@pytest.mark.parametrize("source", INSTIT_SOURCES)
def test_instit_frame_tag_beyond_the_video_is_a_reject(tmp_path, source):
    build_instit(tmp_path)
    path = tmp_path / "inst_it_dataset_video_21k_w_mask.json"
    edit_json(path, lambda d: d[0]["question_answer_pairs"][1].update(question="How do [1] and [2] differ at <4>?"))
    m = build(source, tmp_path, "train", tmp_path)
    assert m["num_samples"] == 1 and [r["key"] for r in m["rejects"]] == ["vid1-1"]
    assert "question_answer_pairs[1]: names frames ['<4>'] of a 3-frame video" in m["rejects"][0]["reason"]


# ------------------------------------------------------------------------------- 2, 5: VideoRefer


def test_videorefer_frame_folder_plays_in_frame_number_order(tmp_path):
    # frame_0.png .. frame_11.png (a text sort puts frame_10, frame_11 before frame_2); grey level 10 + 20 t
    folder = tmp_path / "videos" / "clipF"
    folder.mkdir(parents=True)
    for t in range(12):
        cv2.imwrite(str(folder / f"frame_{t}.png"), np.full((H, W, 3), 10 + 20 * t, np.uint8))
    entry = {
        "id": "F0",
        "video": "clipF",
        "annotation": videorefer_annotation({1: [2, 10]}),
        "conversations": [
            {"from": "human", "value": "<video>\nWhat is <region> doing?"},
            {"from": "gpt", "value": "Sliding."},
        ],
    }
    write_json(tmp_path / "videorefer-qa-75k.json", [entry])
    (s,) = converted("videorefer_qa", tmp_path, "train")
    assert s.media.frame_ids == list(range(12))
    assert [round((grey(f) - 10) / 20) for f in s.media.frames] == list(range(12))
    (track,) = s.objects.values()
    assert sorted(track.masks) == [2, 10]
    for t in (2, 10):  # each mask sits on the image of its own source frame
        assert round((grey(s.media.frames[t]) - 10) / 20) == t
        np.testing.assert_array_equal(decode(track.masks[t]), box_mask(t, 1))


def test_videorefer_repacked_cell_parts_are_ored(tmp_path):
    write_mp4(tmp_path / "videos" / "clipA.mp4", flat_frames(10))
    a = np.zeros((H, W), bool)
    a[2:6, 2:8] = True
    b = np.zeros((H, W), bool)
    b[14:20, 20:28] = True
    c = np.zeros((H, W), bool)
    c[10:14, 4:8] = True
    poly = [4.0, 10.0, 8.0, 10.0, 8.0, 14.0, 4.0, 14.0]  # a flat polygon part (the square c, as COCO rasterises it)
    c_poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], H, W))).astype(bool)
    rows = [
        {
            "id": "r0",
            "video": "clipA.mp4",
            "annotation": [{"3": {}, "5": {}}],
            "conversations": [
                {"from": "human", "value": "<video>\nDescribe <region> in detail."},
                {"from": "gpt", "value": "Two parts."},
            ],
        }
    ]
    write_json(tmp_path / "videorefer-detailed-caption-125k-wo-masks.json", rows)
    # [object][annotated frame][parts]: frame 3 in two RLE pieces, frame 5 an RLE piece, a polygon piece and a null
    write_json(
        tmp_path / "masks_detailed_caption" / "0.json", [[[coco_rle(a), coco_rle(b)], [coco_rle(a), poly, None]]]
    )
    (s,) = converted("videorefer_detailed_caption", tmp_path, "train")
    (track,) = s.objects.values()
    t3, t5 = (s.media.frame_ids.index(f) for f in (3, 5))
    np.testing.assert_array_equal(decode(track.masks[t3]), a | b)
    np.testing.assert_array_equal(decode(track.masks[t5]), a | c_poly)
    assert c_poly.any() and not (a & c_poly).any()


# ------------------------------------------------------------------------------- 6: Ref-SAV


def test_ref_sav_masklet_longer_than_the_video_rejects_each_object(tmp_path):
    build_ref_sav_train(tmp_path, 10)  # masklet rows for video frames 0, 4, 8
    video = tmp_path / "sav" / "sav_train" / "sav_000" / "sav_000001.mp4"
    write_mp4(video, flat_frames(5))  # a truncated download: frame 8 is gone
    m = build("ref_sav", tmp_path, "train", tmp_path)
    assert m["num_samples"] == 0 and [r["key"] for r in m["rejects"]] == ["sav_000001-0", "sav_000001-1"]
    for r in m["rejects"]:
        assert "sav_000001_manual.json: 3 masklet rows need video frames 0, 4, ..., 8" in r["reason"]
        assert str(video) in r["reason"] and "the container reports 5 frames" in r["reason"]


def test_ref_sav_masklet_within_the_video_is_kept(tmp_path):
    truth = build_ref_sav_train(tmp_path, 10)
    # a video longer than the masklet covers (its tail is not annotated) is no damage
    write_mp4(tmp_path / "sav" / "sav_train" / "sav_000" / "sav_000001.mp4", flat_frames(10) + flat_frames(3))
    samples = converted("ref_sav", tmp_path, "train")
    assert len(samples) == 2
    for s, obj in zip(samples, (1, 2)):
        assert s.media.frame_ids == ["0", "4", "8"]
        assert [round((grey(f) - 10) / 24) for f in s.media.frames] == [0, 4, 8]
        for t in range(3):
            np.testing.assert_array_equal(decode(s.objects[1].masks[t]), truth[obj][t])
