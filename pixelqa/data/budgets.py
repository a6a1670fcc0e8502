"""Pixel budgets of images and video frames, applied through the Qwen2.5-VL processor at every call.

The paper feeds video frames at 128-256 visual tokens each and images at the released budget (up to 2,048
tokens); one visual token covers a 28 x 28 pixel cell (14 px patches merged 2 x 2). A budget is a pixel range
per image and per frame: `smart_resize` scales a frame, keeping its aspect ratio, to multiples of 28 pixels whose
area lies in the range. Qwen2-VL's temporal patch merges frame pairs, so a T-frame clip at the per-frame budget
holds ceil(T / 2) x (128..256) tokens.

The budget goes to the processor as call arguments (`call_kwargs`), not as processor attributes: a released
folder's tokenizer config carries `do_resize: false`, which the processor merges into every call and which would
otherwise switch resizing off (a 1080p image would then fail, or enter at its full 2.6K tokens).

Training, evaluation and inference share this module:

    budget = PixelBudget.from_data(recipe.data)            # or PixelBudget() for the released defaults
    out = processor(text=[...], images=[img], return_tensors="pt", **budget.call_kwargs("image"))
    budget.visual_tokens(1080, 1920, kind="image")          # 1,980 tokens, without running the processor
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CELL = 28  # pixels per merged visual token side (patch 14 x merge 2)
TOKEN_PIXELS = CELL * CELL
TEMPORAL_PATCH = 2  # frames per temporal patch of Qwen2-VL's vision tower
KINDS: tuple[str, ...] = ("image", "video")


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = CELL) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, scaled (aspect kept) so the area is in [min, max] pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"height/width: got {height}x{width}, expected positive sizes")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"height/width: got {height}x{width}, expected an aspect ratio below 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class PixelBudget:
    """Pixel ranges per image and per video frame (defaults: the paper's 128-256 tokens a frame, 2,048 an image)."""

    image_min_pixels: int = 128 * TOKEN_PIXELS
    image_max_pixels: int = 2048 * TOKEN_PIXELS
    frame_min_pixels: int = 128 * TOKEN_PIXELS
    frame_max_pixels: int = 256 * TOKEN_PIXELS

    def __post_init__(self) -> None:
        for kind in ("image", "frame"):
            lo, hi = getattr(self, f"{kind}_min_pixels"), getattr(self, f"{kind}_max_pixels")
            if not TOKEN_PIXELS <= lo <= hi:
                raise ValueError(
                    f"{kind}_min_pixels/{kind}_max_pixels: got {lo}/{hi}, expected {TOKEN_PIXELS} <= min <= max "
                    f"(one visual token is {CELL} x {CELL} pixels)"
                )

    @classmethod
    def from_data(cls, data: Any) -> PixelBudget:
        """The budget of a recipe's `data` section: min/max_pixels per frame, image_min/max_pixels per image."""
        default = cls()
        return cls(
            image_min_pixels=int(getattr(data, "image_min_pixels", default.image_min_pixels)),
            image_max_pixels=int(getattr(data, "image_max_pixels", default.image_max_pixels)),
            frame_min_pixels=int(getattr(data, "min_pixels", default.frame_min_pixels)),
            frame_max_pixels=int(getattr(data, "max_pixels", default.frame_max_pixels)),
        )

    def pixels(self, kind: str) -> tuple[int, int]:
        """(min, max) pixels of one image (`kind="image"`) or one video frame (`kind="video"`)."""
        if kind not in KINDS:
            raise ValueError(f"kind: got {kind!r}, expected one of {KINDS}")
        if kind == "image":
            return self.image_min_pixels, self.image_max_pixels
        return self.frame_min_pixels, self.frame_max_pixels

    def size(self, kind: str) -> dict[str, int]:
        """The processor's `size` argument of `kind`: {"shortest_edge": min pixels, "longest_edge": max pixels}."""
        lo, hi = self.pixels(kind)
        return {"shortest_edge": lo, "longest_edge": hi}

    def call_kwargs(self, kind: str) -> dict[str, dict[str, Any]]:
        """Keyword arguments of a Qwen2.5-VL processor call that resize `kind` media into this budget."""
        if kind == "image":
            return {"images_kwargs": {"do_resize": True, "size": self.size("image")}}
        # cap_pixels_per_frame off: the per-frame budget is the whole rule, as in the released loader
        return {"videos_kwargs": {"do_resize": True, "size": self.size("video"), "cap_pixels_per_frame": False}}

    def resized(self, height: int, width: int, kind: str) -> tuple[int, int]:
        """The (height, width) an image or frame of this size enters the vision tower at."""
        lo, hi = self.pixels(kind)
        return smart_resize(height, width, lo, hi)

    def visual_tokens(self, height: int, width: int, kind: str, num_frames: int = 1) -> int:
        """Visual tokens (after the 2 x 2 merge) of an image, or of a `num_frames`-frame clip, of this size."""
        h, w = self.resized(height, width, kind)
        steps = 1 if kind == "image" else math.ceil(num_frames / TEMPORAL_PATCH)
        return steps * (h // CELL) * (w // CELL)


def apply_budget(processor: Any, budget: PixelBudget) -> None:
    """Also set the budget as the processor's own defaults (resizing on), for callers that pass no call_kwargs."""
    for name, kind in (("image_processor", "image"), ("video_processor", "video")):
        proc = getattr(processor, name, None)
        if proc is None:
            continue
        lo, hi = budget.pixels(kind)
        proc.do_resize = True
        proc.size = budget.size(kind)
        for key, value in (("min_pixels", lo), ("max_pixels", hi)):
            if hasattr(proc, key):
                setattr(proc, key, value)
