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
from pixelqa.data.registry import get_source
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
    assert test[0].media.frame_ids == [f"frame{i}" for i in range(5)]  # fewer than 20 frames: all kept
    assert sorted(test[0].objects[1].masks) == [1, 3]


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
