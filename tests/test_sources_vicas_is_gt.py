"""ViCaS's `is_gt` flag: true on the human-annotated frames, false on the masks SAM 2 propagated between them (the
ViCaS release's `vicas/dataset.py`, `include_auto_annotated_masks`; its LG-VIS evaluation scores the `is_gt` frames).
UniPixel's loader reads every entry, so `vicas` keeps them all, as released; the switch `vicas_gt` keeps the `is_gt`
frames only. Checked on a hand-built annotation file in the v1.0 per-video format, against the drawn masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_video import box_mask, coco_rle, rgb_frames, write_jpegs, write_json
from pycocotools import mask as mask_utils

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RejectedSample, load_card
from pixelqa.data.shards import build_shards

VID = "000012"
H, W = 24, 32
# frame file -> is_gt: a human-annotated frame, two SAM 2 frames, a human-annotated frame (listed out of time order)
FRAMES = {"00030.jpg": True, "00000.jpg": True, "00010.jpg": False, "00020.jpg": False}
TIME = ["00000.jpg", "00010.jpg", "00020.jpg", "00030.jpg"]
GT_TIME = ["00000.jpg", "00030.jpg"]
# track 1 everywhere; track 2 only where SAM 2 propagated it (no human mask of it)
TRACKS = {1: TIME, 2: ["00010.jpg", "00020.jpg"]}
REFERRALS = [
    {"prompt": "The man who falls off the bike.", "track_ids": [1]},
    {"prompt": "The dog running past.", "track_ids": [2]},
    {"prompt": "Both of them.", "track_ids": [1, 2]},
]


def drawn(frame: str, track: int) -> np.ndarray:
    """The mask drawn for `track` on `frame` (a box moving with the frame's time position)."""
    return box_mask(TIME.index(frame), track)


def build_vicas_v1(root: Path, split: str = "train") -> Path:
    """A ViCaS v1.0 video (the per-video JSON of the HuggingFace release, every field) with its frames."""
    write_jpegs(root / "video_frames" / VID, [n[:-4] for n in TIME], rgb_frames(len(TIME), seed=12))
    segmentations = []
    for name, is_gt in FRAMES.items():
        ids = [t for t, frames in TRACKS.items() if name in frames]
        rles = [coco_rle(drawn(name, t)) for t in ids]
        segmentations.append({"filename": name, "is_gt": is_gt, "track_ids": ids, "mask_rles": rles})
    ann = {
        "video_id": int(VID),
        "src_dataset": "Oops",
        "filename": f"{VID}_Bike_Fails_(June_2017)3.mp4",
        "image_size": [H, W],
        "caption_raw_en": "A man falls off his bike.",
        "caption_parsed_en": "A man falls off his bike.",
        "caption_raw_en_gpt": "A man falls off his bike while a dog runs past.",
        "caption_parsed_en_gpt": "A man falls off his bike while a dog runs past.",
        "caption_raw_cn": "",
        "reworded_en_captions": [],
        "object_referrals": REFERRALS,
        "segmentations": segmentations,
        "all_track_ids": [1, 2],
    }
    path = root / "annotations" / "v1.0" / f"{VID}.json"
    write_json(path, ann)
    write_json(root / "splits" / "v1.0" / f"{split}.json", [int(VID)])
    return path


def samples(source: str, root: Path, split: str = "train") -> dict:
    """The good samples of a split by referral index, validated (frames decoded)."""
    src = get_source(source)
    out = [s for item in src.items(root, split) for s in src.convert(root, split, item)]
    return {s.meta["exp_id"]: s.validate(check_frames=True) for s in out if not isinstance(s, RejectedSample)}


def decoded(sample) -> list[np.ndarray]:
    """The target's masks in time order, decoded by pycocotools."""
    track = sample.objects[1].masks
    return [mask_utils.decode({**track[t], "counts": track[t]["counts"].encode()}).astype(bool) for t in sorted(track)]


def union(frame: str, tracks: list[int]) -> np.ndarray:
    """The drawn union of `tracks` on `frame` (empty where none of them has a mask)."""
    out = np.zeros((H, W), bool)
    for t in tracks:
        if frame in TRACKS[t]:
            out |= drawn(frame, t)
    return out


def test_released_vicas_keeps_every_annotated_frame_whatever_is_gt(tmp_path):
    build_vicas_v1(tmp_path)
    got = samples("vicas", tmp_path)
    assert sorted(got) == ["0", "1", "2"]  # the SAM 2-only track is trained on, as UniPixel's loader reads it
    for i, ref in enumerate(REFERRALS):
        s = got[str(i)]
        assert s.media.frame_ids == TIME
        for mask, frame in zip(decoded(s), TIME):
            np.testing.assert_array_equal(mask, union(frame, ref["track_ids"]))


def test_vicas_gt_keeps_the_human_annotated_frames_only(tmp_path):
    build_vicas_v1(tmp_path)
    every = samples("vicas", tmp_path)
    (s,) = samples("vicas_gt", tmp_path).values()
    assert s.source == "vicas_gt" and s.meta["exp_id"] == "0" and s.media.frame_ids == GT_TIME
    assert s.media.frames == [every["0"].media.frames[0], every["0"].media.frames[3]]  # the same files, no others
    for mask, frame in zip(decoded(s), GT_TIME):
        np.testing.assert_array_equal(mask, drawn(frame, 1))
    # track 2 has no human mask: a train referral naming it is a counted reject, as one naming an unknown track
    m = build_shards("vicas_gt", tmp_path, tmp_path / "out-train", split="train", on_error="skip", progress=False)
    assert m["num_samples"] == 1 and [r["key"] for r in m["rejects"]] == [f"{VID}-1", f"{VID}-2"]
    for r, tracks in zip(m["rejects"], ("[2]", "[1, 2]")):
        assert f"track_ids {tracks} name [2] in no 'segmentations' entry with is_gt true" in r["reason"]
        assert "(track ids there: [1])" in r["reason"]


def test_vicas_gt_val_keeps_every_referral_on_the_human_frames(tmp_path):
    build_vicas_v1(tmp_path, split="val")
    got = samples("vicas_gt", tmp_path, "val")
    assert sorted(got) == ["0", "1", "2"]  # the benchmark scores every referral
    for i, ref in enumerate(REFERRALS):
        s = got[str(i)]
        assert s.media.frame_ids == GT_TIME
        for mask, frame in zip(decoded(s), GT_TIME):
            np.testing.assert_array_equal(mask, union(frame, ref["track_ids"]))
    assert not any(m.any() for m in decoded(got["1"]))  # the dog has no human mask: empty on every kept frame


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        (None, "segmentations[2] (00010.jpg): is_gt got None, expected true or false"),
        ("yes", "segmentations[2] (00010.jpg): is_gt got 'yes', expected true or false"),
    ],
)
def test_vicas_gt_refuses_an_unreadable_flag_per_referral(tmp_path, flag, reason):
    path = build_vicas_v1(tmp_path)
    ann = json.loads(path.read_text())
    if flag is None:
        del ann["segmentations"][2]["is_gt"]
    else:
        ann["segmentations"][2]["is_gt"] = flag
    path.write_text(json.dumps(ann))
    m = build_shards("vicas_gt", tmp_path, tmp_path / "out", split="train", on_error="skip", progress=False)
    assert m["num_samples"] == 0 and [r["key"] for r in m["rejects"]] == [f"{VID}-0", f"{VID}-1", f"{VID}-2"]
    assert all(f"{path}: object_referrals[" in r["reason"] and reason in r["reason"] for r in m["rejects"])
    assert sorted(samples("vicas", tmp_path)) == ["0", "1", "2"]  # the released source never reads the flag


def test_vicas_gt_without_a_human_frame_rejects_each_referral(tmp_path):
    path = build_vicas_v1(tmp_path)
    ann = json.loads(path.read_text())
    for seg in ann["segmentations"]:
        seg["is_gt"] = False
    path.write_text(json.dumps(ann))
    m = build_shards("vicas_gt", tmp_path, tmp_path / "out", split="train", on_error="skip", progress=False)
    assert m["num_samples"] == 0 and len(m["rejects"]) == 3
    assert all("none of its 4 entries has is_gt true" in r["reason"] for r in m["rejects"])


def test_vicas_gt_reads_the_vicas_layout_and_card():
    gt, released = get_source("vicas_gt"), get_source("vicas")
    assert gt.splits == released.splits == tuple(load_card("vicas").splits) and gt.task == released.task
    card = load_card("vicas_gt")  # its own card, with the splits and task of the layout it reads
    assert card.name == "vicas_gt" and tuple(card.splits) == gt.splits
    assert gt.only_is_gt and not released.only_is_gt
