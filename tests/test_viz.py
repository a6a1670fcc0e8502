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


def test_save_overlay_png_for_images_gif_for_videos(tmp_path):
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    m = np.zeros((1, 1, 8, 8), bool)
    png = save_overlay(frames, m, m, tmp_path / "img")
    assert png.suffix == ".png" and Image.open(png).size == (8 + 2 + 8, 8)  # pred | gap | truth
    video = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 90, 170)])  # distinct frames (GIF merges repeats)
    gif = save_overlay(video, np.zeros((2, 3, 8, 8), bool), None, tmp_path / "vid")
    assert gif.suffix == ".gif" and Image.open(gif).n_frames == 3
    assert side_by_side(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), gap=1).shape == (4, 11, 3)
