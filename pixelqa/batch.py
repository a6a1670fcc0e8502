"""The batch contract between `pixelqa.data.collate` (producer) and `pixelqa.model` (consumer).

Plain tensors and dataclasses only: this module imports neither side. B = samples in the batch,
L = padded token length, T = frames of a sample, H x W = the sample's source frame size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import torch

PromptKind = Literal["point", "box", "mask"]


@dataclass
class VisualPrompt:
    """One visual prompt, in the order of the <|ref|> tokens of its sample.

    coords are normalised to [0, 1] by the frame size: (x, y) for a point, (x1, y1, x2, y2) for a box;
    mask is a (H, W) bool tensor for a mask prompt. frame is the 0-based index into the sample's frames.
    """

    kind: PromptKind
    frame: int
    coords: tuple[float, ...] = ()
    mask: torch.Tensor | None = None
    object_id: int | None = None


@dataclass
class MemoryRef:
    """One <|mem|> token: object `object_id` on the frame pair starting at `frame`.

    mask: (H, W) bool, the union of the pair's masks. cells: optional (h, w) bool mask already on the merged
    token grid (the released data's `refer_mask` form); when given it is pooled as is.
    """

    object_id: int
    frame: int
    mask: torch.Tensor | None
    cells: torch.Tensor | None = None


@dataclass
class Batch:
    """A collated batch. Fields that a batch does not need are None / empty lists."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 1 = real token
    labels: torch.Tensor  # (B, L) long, -100 where no LM loss (prompt, padding, media)
    mm_token_type_ids: torch.Tensor  # (B, L) long: 0 text, 1 image, 2 video
    frames: list[torch.Tensor]  # per sample (T, 3, H, W) uint8, the sampled frames in order
    pixel_values: torch.Tensor | None = None  # processor output for image samples
    image_grid_thw: torch.Tensor | None = None  # (num_images, 3)
    pixel_values_videos: torch.Tensor | None = None  # processor output for video samples
    video_grid_thw: torch.Tensor | None = None  # (num_videos, 3)
    second_per_grid_ts: torch.Tensor | None = None  # (num_videos,)
    prompts: list[list[VisualPrompt]] = field(default_factory=list)  # per sample, <|ref|> order
    memory: list[list[MemoryRef]] = field(default_factory=list)  # per sample, <|mem|> order
    seg_masks: list[torch.Tensor] = field(default_factory=list)  # per sample (K, T, H, W) bool, <|seg|> order
    seg_valid: list[torch.Tensor] = field(default_factory=list)  # per sample (K, T) bool: frame annotated
    seg_object_ids: list[list[int]] = field(default_factory=list)  # per sample, object id of each <|seg|>
    tasks: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)  # per sample: answer, choices, question type, ...

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor (also inside prompts/memory lists) moved to `device`."""

        def move(x):
            if isinstance(x, torch.Tensor):
                return x.to(device)
            if isinstance(x, list):
                return [move(v) for v in x]
            if isinstance(x, VisualPrompt):
                return VisualPrompt(x.kind, x.frame, x.coords, move(x.mask), x.object_id)
            if isinstance(x, MemoryRef):
                return MemoryRef(x.object_id, x.frame, move(x.mask), move(x.cells))
            return x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})
