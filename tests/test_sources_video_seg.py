"""Ref-SAV (mp4 + SA-V masklets), GroundMoRe (palette PNGs + questions) and ViCaS (per-video JSON) converters."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_video import (
    H,
    W,
    box_mask,
    build_groundmore,
    build_mask_dict_vos,
    build_ref_sav_train,
    build_vicas,
    flat_frames,
    write_mp4,
)

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.sources.video_io import read_video_frames, uniform_indices, video_info
from pixelqa.prompt_format import SEG


def convert_all(name, root, split):
    """Every sample of a split, validated."""
    src = get_source(name)
    return [s.validate(check_frames=True) for item in src.items(root, split) for s in src.convert(root, split, item)]


def test_video_io_reads_requested_frames(tmp_path):
    write_mp4(tmp_path / "v.mp4", flat_frames(9))
    n, fps, size = video_info(str(tmp_path / "v.mp4"))
    assert (n, size) == (9, (H, W)) and abs(fps - 24.0) < 1e-3
    got = read_video_frames(str(tmp_path / "v.mp4"), [8, 0, 4, 4])
    # Flat frames survive compression: grey level identifies the frame (10 + 24 t).
    assert [round((f.mean() - 10) / 24) for f in got] == [8, 0, 4, 4]
    with pytest.raises(ValueError, match="could not be decoded"):
        read_video_frames(str(tmp_path / "v.mp4"), [20])
    assert uniform_indices(10, 3) == [1, 5, 8] and uniform_indices(2, 5) == [0, 1]


def test_ref_sav_train_from_mp4_and_masklets(tmp_path):
    truth = build_ref_sav_train(tmp_path)
    samples = convert_all("ref_sav", tmp_path, "train")
    assert len(samples) == 2
    for s, obj in zip(samples, (1, 2)):
        assert s.media.frame_ids == ["0", "4", "8"] and s.media.size == (H, W)
        assert s.media.fps == pytest.approx(6.0)
        for t in range(3):
            np.testing.assert_array_equal(masks.decode(s.objects[1].masks[t]), truth[obj][t])
        # Video frames 0, 4, 8 (grey levels 10 + 24 t), identified through compression.
        assert [round((f.mean() - 10) / 24) for f in s.decode_frames()] == [0, 4, 8]
    assert samples[1].meta["expression"] == "The lower box, which vanishes briefly."


def test_ref_sav_valid_is_mevis_style(tmp_path):
    build_mask_dict_vos(
        tmp_path,
        tmp_path / "valid" / "meta_expressions_valid.json",
        tmp_path / "valid" / "mask_dict.json",
        tmp_path / "valid" / "videos",
    )
    assert len(convert_all("ref_sav", tmp_path, "valid")) == 8


def test_ref_sav_bad_masklet_named(tmp_path):
    build_ref_sav_train(tmp_path)
    p = tmp_path / "sav" / "sav_train" / "sav_000" / "sav_000001_manual.json"
    p.write_text('{"masklet": []}')
    with pytest.raises(ValueError, match="masklet"):
        convert_all("ref_sav", tmp_path, "train")


def test_groundmore_train_and_test(tmp_path):
    labels = build_groundmore(tmp_path)
    train = convert_all("groundmore", tmp_path, "train")
    assert [s.meta["question_id"] for s in train] == ["q0", "q1"]  # vid_missing has no annotation folder
    q0, q1 = train
    assert q0.media.frame_ids == ["frame1", "frame3"]  # train keeps only frames with masks
    np.testing.assert_array_equal(masks.decode(q0.objects[1].masks[1]), labels[3] == 1)
    np.testing.assert_array_equal(masks.decode(q1.objects[1].masks[0]), labels[1] > 0)
    assert q0.meta["question"] == "Who is pushing the cart?" and q0.answer == "the man"
    assert q0.meta["question_type"] == "Causal" and q1.meta["obj_ids"] == [1, 2]
    assert q0.turns[1].text.startswith("the man") and q0.turns[1].text.count(SEG) == 1
    test = convert_all("groundmore", tmp_path, "test")
    # 20 frames, linspace(0, 4, 20) cast to int: a 5-frame video repeats each frame (0.21 steps truncated)
    idx = [0] * 5 + [1] * 5 + [2] * 5 + [3] * 4 + [4]
    assert test[0].meta["frame_indices"] == idx and test[0].media.frame_ids == [f"frame{i}" for i in idx]
    assert sorted(test[0].objects[1].masks) == [t for t, i in enumerate(idx) if i in (1, 3)]
    assert "action_window" not in test[0].meta  # the fixture's questions record none


def test_groundmore_test_frames_and_action_window_through_the_protocol(tmp_path):
    from fixtures_video import rgb_frames, write_jpegs, write_json, write_palette_png

    from pixelqa.eval.official import get_official

    # a 30-frame video (6 fps, clip starting at 10 s), object 1 on every frame; the action spans 11 s .. 12.5 s
    names = [f"{i:05d}" for i in range(30)]
    adir = tmp_path / "annotations" / "v"
    write_jpegs(adir / "images", names, rgb_frames(30, seed=1))
    for t in range(30):
        write_palette_png(adir / "masks" / f"{names[t]}.png", box_mask(t, 1).astype(np.uint8))
    q = {"question": "Who jumps?", "answer": "the box", "q_type": "Causal", "obj_id": "1"}
    write_json(
        tmp_path / "test_v2.json",
        {"videos": {"v": {"clip_start": 10.0, "questions": {"q": dict(q, action_start=11.0, action_end=12.5)}}}},
    )
    (s,) = convert_all("groundmore", tmp_path, "test")
    # linspace(0, 29, 20) cast to int, by hand: steps of 29 / 19 = 1.526
    idx = [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27, 29]
    assert s.meta["frame_indices"] == idx and s.media.frame_ids == [names[i] for i in idx]
    assert s.meta["action_window"] == {"start": 11.0, "end": 12.5, "clip_start": 10.0}
    proto = get_official("groundmore")
    req = proto.request(s)
    assert req.sam_frames == list(range(20)) and len(req.llm_frames) == 16
    # window [(11 - 10) * 6, (12.5 - 10) * 6 - 1] = [6, 14]: source frames 6, 7, 9, 10, 12, 13 (positions 4..9)
    gt = proto.target(s, req)
    assert [i for i, f in zip(idx, gt) if f.any()] == [6, 7, 9, 10, 12, 13]
    bad = dict(q, action_start=3.0, action_end=1.0)
    write_json(tmp_path / "test_v2.json", {"videos": {"v": {"questions": {"q": bad}}}})
    with pytest.raises(ValueError, match="action_end 1.0 is before action_start 3.0"):
        convert_all("groundmore", tmp_path, "test")


def test_vicas_referrals(tmp_path):
    truth = build_vicas(tmp_path)
    samples = convert_all("vicas", tmp_path, "train")
    assert [s.meta["exp_id"] for s in samples] == ["0", "1"]
    for s in samples:
        assert s.media.frame_ids == ["00000.jpg", "00004.jpg"]
        for t, m in truth[s.meta["exp_id"]].items():
            np.testing.assert_array_equal(masks.decode(s.objects[1].masks[t]), m)
    assert samples[1].meta["obj_ids"] == ["3", "5"] and samples[0].meta["caption"] == "Two boxes slide."
    assert box_mask(0, 1).sum() == masks.area(samples[0].objects[1].masks[0])
    with pytest.raises(FileNotFoundError, match="splits"):
        get_source("vicas").items(tmp_path / "nowhere", "train")
