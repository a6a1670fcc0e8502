"""Mask overlays: blend values computed by hand, and the files read back with PIL in their real formats."""

import numpy as np
import pytest
from PIL import Image

from pixelqa.viz import PALETTE, overlay_masks, overlay_video, save_gif, save_overlay, save_png, side_by_side


def test_overlay_blend_matches_hand_computation():
    frame = np.full((6, 6, 3), 100, dtype=np.uint8)
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:5] = True
    out = overlay_masks(frame, [mask], alpha=0.5, contour=False)
    r, g, b = PALETTE[0]
    # inside: (1 - 0.5) * 100 + 0.5 * colour, rounded
    assert out[2, 2].tolist() == [round(50 + r / 2), round(50 + g / 2), round(50 + b / 2)]
    assert out[0, 0].tolist() == [100, 100, 100]  # outside untouched
    with_edges = overlay_masks(frame, [mask], alpha=0.5, contour=True)
    assert with_edges[1, 1].tolist() == list(PALETTE[0])  # outline drawn in the full colour
    assert with_edges[2, 2].tolist() == out[2, 2].tolist()  # interior unchanged by the outline


def test_overlay_accepts_non_contiguous_frames_and_rejects_bad_shapes():
    frames = np.zeros((2, 3, 8, 8), dtype=np.uint8).transpose(0, 2, 3, 1)  # (T, H, W, 3) view, not C-contiguous
    masks = np.zeros((1, 2, 8, 8), dtype=bool)
    masks[0, :, 2:4, 2:4] = True
    assert overlay_video(frames, masks).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="masks\\[0\\]"):
        overlay_masks(frames[0], [np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="frame"):
        overlay_masks(np.zeros((8, 8), np.uint8), [])


def test_png_and_gif_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
    back = np.asarray(Image.open(save_png(img, tmp_path / "a.png")).convert("RGB"))
    assert np.array_equal(back, img)
    frames = np.stack([np.full((10, 12, 3), v, np.uint8) for v in (0, 128, 255)])
    gif = Image.open(save_gif(frames, tmp_path / "a.gif"))
    assert gif.n_frames == 3
    gif.seek(1)
    assert np.asarray(gif.convert("RGB"))[0, 0].tolist() == [128, 128, 128]


def test_thick_outline_stays_inside_the_mask():
    frame = np.zeros((12, 12, 3), np.uint8)
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    out = overlay_masks(frame, [mask], alpha=0.0, thickness=2)
    color = list(PALETTE[0])
    assert out[2, 5].tolist() == color and out[3, 5].tolist() == color  # two rings, both inside the mask
    assert out[4, 5].tolist() == [0, 0, 0] and out[1, 5].tolist() == [0, 0, 0]  # not deeper, not outside


def test_labels_sit_on_a_badge_above_each_mask_and_empty_masks_get_none():
    frame = np.zeros((80, 80, 3), np.uint8)
    mask = np.zeros((80, 80), bool)
    mask[40:60, 30:50] = True
    out = overlay_masks(frame, [mask, np.zeros((80, 80), bool)], alpha=0.0, contour=False, labels=["[1]", "[2]"])
    badge = out[:40, 28:60]  # rows above the mask
    assert (badge == PALETTE[0]).all(axis=-1).sum() > 50  # the badge in the object's colour...
    assert (badge.sum(axis=-1) == 0).sum() > 0 and (badge == PALETTE[0]).all(axis=-1)[:, :2].sum() == 0
    assert (out[:40] != 0).any(axis=-1).sum() == ((out != 0).any(axis=-1)).sum()  # nothing drawn for empty [2]
    assert np.array_equal(out[40:], frame[40:])  # the mask itself untouched (alpha 0, no contour)
    with pytest.raises(ValueError, match="labels: got 1, expected one per mask \\(2\\)"):
        overlay_masks(frame, [mask, mask], labels=["[1]"])


def test_label_text_contrasts_with_its_badge():
    from pixelqa.viz import _text_color

    assert _text_color((255, 255, 255)) == (0, 0, 0) and _text_color((0, 0, 0)) == (255, 255, 255)
    assert _text_color((0, 255, 255)) == (0, 0, 0) and _text_color((140, 90, 255)) == (255, 255, 255)


def test_compare_panels_truth_left_prediction_right_enlarged_and_titled():
    from pixelqa.viz import compare_panels

    frames = np.full((2, 20, 30, 3), 50, np.uint8)
    target = np.zeros((1, 2, 20, 30), bool)
    target[0, :, 5:15, 5:15] = True
    same = compare_panels(frames, target, target, min_side=60)  # factor 3: panels 60 x 90 under a 22-row title
    assert same.shape == (2, 22 + 60, 90 + 4 + 90, 3)
    left, right = same[:, 22:, :90], same[:, 22:, 94:]
    assert np.array_equal(left, right)  # a perfect prediction looks exactly like the truth
    assert left[0, 15, 30].tolist() == list(PALETTE[0])  # outline at the mask's (scaled) top-left edge
    assert not np.array_equal(same[0, :22, :90], same[0, :22, 94:])  # different titles
    assert not np.array_equal(same[0, :22], same[1, :22])  # frame counter in the titles of a video
    missed = compare_panels(frames, np.zeros_like(target), target, min_side=60)
    assert np.array_equal(missed[:, 22:, :90], left)  # truth unchanged
    assert np.array_equal(missed[:, 22:, 94:], np.full((2, 60, 90, 3), 50, np.uint8))  # nothing predicted
    with pytest.raises(ValueError, match="ids: got 2, expected one per predicted object \\(1\\)"):
        compare_panels(frames, target, target, ids=[1, 2])


def test_save_overlay_png_for_images_gif_for_videos(tmp_path):
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    m = np.zeros((1, 1, 8, 8), bool)
    png = save_overlay(frames, m, m, tmp_path / "img")
    assert png.suffix == ".png" and Image.open(png).size == (256 + 4 + 256, 22 + 256)  # truth | gap | prediction
    video = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 90, 170)])  # distinct frames (GIF merges repeats)
    gif = save_overlay(video, np.zeros((2, 3, 8, 8), bool), None, tmp_path / "vid")
    assert gif.suffix == ".gif" and Image.open(gif).n_frames == 3 and Image.open(gif).size == (256, 22 + 256)
    assert side_by_side(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), gap=1).shape == (4, 11, 3)
