"""The model's closed-choice switches (docs/departures.md) and their values, the released one first.

A leaf module (no imports), so the recipe loader (pixelqa.config) checks them when a recipe loads, before any work,
and the model (UniPixel.check_choices) when it is built, from one table.
"""

from __future__ import annotations

SWITCH_CHOICES: dict[str, tuple[str, ...]] = {
    "seg_head": ("released", "token"),
    "prompt_encoder.kind": ("released", "fourier"),
    "memory.pooling": ("window", "raster", "area"),
    "loss.mask": ("released", "single"),
    "mask_decoder.propagation": ("forward", "bidirectional"),
}
