"""Pixel budgets through the real-format Qwen2.5-VL processor of the shared released-format fixture: a 1080p
image and an 8-frame 720p clip enter at the paper's token counts (and the released folder's own settings would not
apply any budget)."""

from pathlib import Path

import numpy as np
import pytest

from pixelqa.data.budgets import CELL, PixelBudget, smart_resize

FIXTURE = Path("/work/shared/data/unipixel-official-tiny/checkpoint")
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared released-format fixture not present")


@pytest.fixture(scope="module")
def processor():
    from pixelqa.model.release import build_processor, inspect_folder

    return build_processor(inspect_folder("unipixel-3b", str(FIXTURE)))


def _video_call(processor, clip, budget):
    n, h, w = clip.shape[:3]
    meta = {"total_num_frames": n, "fps": 2.0, "frames_indices": list(range(n)), "height": h, "width": w}
    kwargs = budget.call_kwargs("video")
    kwargs["videos_kwargs"].update({"do_sample_frames": False, "video_metadata": [meta]})
    text = "<|vision_start|><|video_pad|><|vision_end|>"
    return processor(text=[text], videos=[clip], return_tensors="pt", **kwargs)


@needs_fixture
def test_1080p_image_and_720p_clip_token_counts_through_the_real_processor(processor):
    budget = PixelBudget()  # released: up to 2,048 tokens per image, 128-256 per frame
    image = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    out = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"],
        images=[image],
        return_tensors="pt",
        **budget.call_kwargs("image"),
    )
    t, gh, gw = out["image_grid_thw"][0].tolist()
    tokens = int((out["input_ids"][0] == processor.image_token_id).sum())
    # by hand: 1920x1080 = 2,073,600 px > 2048 x 784; scale 1/sqrt(2073600/1605632) -> 1689x950 -> floor to 28s
    assert (gh * 14, gw * 14) == (924, 1680)
    assert tokens == (924 // 28) * (1680 // 28) == 1980 <= 2048
    assert tokens == budget.visual_tokens(1080, 1920, "image")

    clip = np.random.default_rng(1).integers(0, 255, (8, 720, 1280, 3), dtype=np.uint8)
    out = _video_call(processor, clip, budget)
    tokens = int((out["input_ids"][0] == processor.video_token_id).sum())
    per_frame_pair = tokens // 4  # 8 frames, temporal patch 2
    assert out["video_grid_thw"][0].tolist() == [4, 24, 42]
    assert 128 <= per_frame_pair <= 256 and tokens == 4 * 12 * 21 == 1008
    assert tokens == budget.visual_tokens(720, 1280, "video", num_frames=8)
    assert tokens + 2048 < 4096  # room for text under the paper's 4K cap


@needs_fixture
def test_without_a_budget_the_release_settings_give_the_issue_counts(processor):
    # the folder's own settings (12.8M max pixels): a 1080p image is 2,691 tokens, as the issue measured
    wide = PixelBudget(image_min_pixels=3136, image_max_pixels=12845056)
    image = np.zeros((1080, 1920, 3), dtype=np.uint8)
    out = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"],
        images=[image],
        return_tensors="pt",
        **wide.call_kwargs("image"),
    )
    assert int((out["input_ids"][0] == processor.image_token_id).sum()) == 2691
    assert PixelBudget().visual_tokens(1080, 1920, "image") != 2691  # the budget changes it


def test_smart_resize_by_hand_and_bad_budgets_named():
    assert smart_resize(720, 1280, 128 * 784, 256 * 784) == (336, 588)  # 12 x 21 = 252 cells
    assert smart_resize(10, 10, 128 * 784, 256 * 784) == (336, 336)  # small frames scaled up to >= 128 cells
    h, w = smart_resize(480, 640, 4 * 784, 2048 * 784)
    assert (h, w) == (476, 644) and h % CELL == 0 and w % CELL == 0
    with pytest.raises(ValueError, match="frame_min_pixels/frame_max_pixels: got 500/100"):
        PixelBudget(frame_min_pixels=500, frame_max_pixels=100)
    with pytest.raises(ValueError, match="kind: got 'audio'"):
        PixelBudget().pixels("audio")
