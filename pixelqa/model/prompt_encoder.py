"""Visual prompts -> LLM tokens: the sparse (point / box + time) encoders and dense (mask) pooling.

Coordinates are normalised to [0, 1] by the frame size (see `pixelqa.batch.VisualPrompt`).
`RefPromptEncoder` is the released model's encoder (module names as in the release, so its weights load by name);
`SparsePromptEncoder` is our first Fourier-feature encoder, kept as `prompt_encoder.kind=fourier`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POINT, TOP_LEFT, BOTTOM_RIGHT = 0, 1, 2  # rows of the type embedding


class FourierFeatures(nn.Module):
    """Random Fourier features: (..., d) coords in [0, 1] -> (..., 2 * num_feats) [sin, cos]."""

    def __init__(self, in_dim: int, num_feats: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("gaussian", scale * torch.randn(in_dim, num_feats))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates in [0, 1]."""
        proj = 2 * math.pi * ((2 * coords - 1) @ self.gaussian.to(coords.dtype))
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


def check_point(coords: Sequence[float], where: str) -> None:
    """Raise if a point is not (x, y) inside the unit square."""
    if len(coords) != 2:
        raise ValueError(f"{where}.coords: got {tuple(coords)}, expected (x, y) for a point")
    if not all(0.0 <= c <= 1.0 for c in coords):
        raise ValueError(f"{where}.coords: point {tuple(coords)} lies outside the frame; expected values in [0, 1]")


def check_box(coords: Sequence[float], where: str) -> None:
    """Raise if a box is not (x1, y1, x2, y2) inside the unit square with x1 <= x2, y1 <= y2."""
    if len(coords) != 4:
        raise ValueError(f"{where}.coords: got {tuple(coords)}, expected (x1, y1, x2, y2) for a box")
    if not all(0.0 <= c <= 1.0 for c in coords):
        raise ValueError(f"{where}.coords: box {tuple(coords)} lies outside the frame; expected values in [0, 1]")
    x1, y1, x2, y2 = coords
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where}.coords: box {tuple(coords)} has x2 < x1 or y2 < y1; expected x1 <= x2, y1 <= y2")


class SparsePromptEncoder(nn.Module):
    """Points (x, y, t) and boxes (x1, y1, x2, y2, t) -> one LLM-width token each.

    Spatial: 2D random Fourier features of each position + a learnable type embedding (point, top-left,
    bottom-right); a box concatenates its two corners and projects back to `hidden`. Temporal: 1D Fourier
    features of t / max_frames. [spatial, temporal] -> GELU -> Linear -> LLM width. With temporal=False the
    temporal half is zeros, so the layer shapes (and checkpoints) are the same as with time on.
    """

    def __init__(self, llm_width: int, hidden: int = 256, temporal: bool = True, max_frames: int = 64):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"prompt_encoder.hidden: got {hidden}, expected an even number")
        self.hidden, self.temporal, self.max_frames = hidden, temporal, max_frames
        self.spatial_pe = FourierFeatures(2, hidden // 2)
        self.temporal_pe = FourierFeatures(1, hidden // 2)
        self.type_embed = nn.Embedding(3, hidden)
        self.box_proj = nn.Linear(2 * hidden, hidden)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(2 * hidden, llm_width))

    @torch.no_grad()
    def init_from_sam(self, sam_prompt_encoder: nn.Module) -> None:
        """Start the spatial part from SAM 2's prompt encoder (its Fourier matrix and point/corner embeddings)."""
        gauss = sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        if gauss.shape == self.spatial_pe.gaussian.shape:
            self.spatial_pe.gaussian.copy_(gauss)
        pts = sam_prompt_encoder.point_embeddings  # 0 neg, 1 pos, 2 top-left, 3 bottom-right
        if pts[1].weight.shape[-1] == self.hidden:
            for row, sam_row in ((POINT, 1), (TOP_LEFT, 2), (BOTTOM_RIGHT, 3)):
                self.type_embed.weight[row].copy_(pts[sam_row].weight[0])

    def forward(self, kinds: Sequence[str], coords: Sequence[Sequence[float]], frames: Sequence[int]) -> torch.Tensor:
        """Encode N prompts ("point" (x, y) or "box" (x1, y1, x2, y2)) on frames -> (N, llm_width)."""
        if not (len(kinds) == len(coords) == len(frames)):
            raise ValueError(f"kinds/coords/frames: lengths {len(kinds)}/{len(coords)}/{len(frames)} differ")
        device = self.type_embed.weight.device
        dtype = self.type_embed.weight.dtype
        spatial = []
        for i, (kind, xy) in enumerate(zip(kinds, coords)):
            c = torch.tensor(list(xy), dtype=dtype, device=device)
            if kind == "point":
                check_point(xy, f"prompts[{i}]")
                spatial.append(self.spatial_pe(c) + self.type_embed.weight[POINT])
            elif kind == "box":
                check_box(xy, f"prompts[{i}]")
                tl = self.spatial_pe(c[:2]) + self.type_embed.weight[TOP_LEFT]
                br = self.spatial_pe(c[2:]) + self.type_embed.weight[BOTTOM_RIGHT]
                spatial.append(self.box_proj(torch.cat([tl, br])))
            else:
                raise ValueError(f"prompts[{i}].kind: got {kind!r}, expected 'point' or 'box' (masks are dense)")
        spatial_t = torch.stack(spatial)  # (N, hidden)
        t = torch.tensor([[f / self.max_frames] for f in frames], dtype=dtype, device=device)  # (N, 1)
        temporal = self.temporal_pe(t) if self.temporal else torch.zeros_like(spatial_t)
        return self.out(torch.cat([spatial_t, temporal], dim=-1))  # (N, 2*hidden) -> (N, llm_width)


def mask_to_grid(mask: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) binary mask -> (h, w) area fractions on the visual-token grid."""
    if mask.dim() != 2:
        raise ValueError(f"mask: got shape {tuple(mask.shape)}, expected (H, W)")
    return F.adaptive_avg_pool2d(mask[None, None].float(), grid_hw)[0, 0]


def masked_pool(
    features: torch.Tensor, mask: torch.Tensor, grid_hw: tuple[int, int], where: str = "mask"
) -> torch.Tensor:
    """Masked average of one frame's visual tokens.

    features: (h*w, C) in raster order of the token grid; mask: (H, W) bool at any resolution -> (C,).
    Weights are the mask's area fraction in each token cell, so a small object still pools something.
    """
    h, w = grid_hw
    if features.shape[0] != h * w:
        raise ValueError(f"features: got {features.shape[0]} tokens, expected {h}x{w}={h * w}")
    if not bool(mask.any()):
        raise ValueError(f"{where}: empty mask (no foreground pixel); expected at least one True pixel")
    weights = mask_to_grid(mask, grid_hw).flatten().to(features.dtype)  # (h*w,)
    return (weights[:, None] * features).sum(0) / weights.sum()


class FourierTime(nn.Module):
    """1D random Fourier features of a time in [0, 1] -> (..., 2 * num_feats) [sin, cos] (the released tem_pe)."""

    def __init__(self, num_feats: int = 128):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(1, num_feats))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(N, 1) times in [0, 1] -> (N, 2 * num_feats), computed in float32."""
        proj = 2 * math.pi * ((2 * t.float() - 1) @ self.positional_encoding_gaussian_matrix.float())
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class RefPromptEncoder(nn.Module):
    """The released `<|ref|>` encoder: points / boxes on a frame -> one LLM-width token each.

    Spatial: a SAM 2 prompt encoder (`ref_encoder`, started from SAM's) embeds the point (+ SAM's padding point)
    or the box corners (+ padding) at `image_size` pixels: (N, 2 or 3, 256), flattened and projected to 3 * 256
    by `ref_proj_single` (points) or `ref_proj_double` (boxes). Temporal: Fourier features of t / (T - 1), with
    T the clip's frame count as the LLM sees it (even-padded), plus `tem_emb`, projected by `tem_proj`.
    [spatial, temporal] -> `ref_proj` (GELU -> Linear) -> LLM width.
    """

    def __init__(self, llm_width: int, image_size: int, hidden: int = 256, temporal: bool = True):
        super().__init__()
        from sam2.modeling.sam.prompt_encoder import PromptEncoder

        if image_size % 16:
            raise ValueError(f"mask_decoder.image_size: got {image_size}, expected a multiple of 16")
        self.image_size, self.temporal = image_size, temporal
        side = image_size // 16
        self.ref_encoder = PromptEncoder(
            embed_dim=hidden,
            image_embedding_size=(side, side),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        width = 3 * hidden
        self.ref_proj_single = nn.Linear(2 * hidden, width)
        self.ref_proj_double = nn.Linear(3 * hidden, width)
        self.tem_pe = FourierTime(hidden // 2)
        self.tem_emb = nn.Embedding(1, hidden)
        self.tem_proj = nn.Linear(hidden, width)
        self.ref_proj = nn.Sequential(nn.GELU(), nn.Linear(2 * width, llm_width))

    @torch.no_grad()
    def init_as_released(self, sam_prompt_encoder: nn.Module) -> None:
        """Initialise as the release's training does: SAM's prompt-encoder parameters, xavier-uniform projections."""
        theirs = dict(sam_prompt_encoder.named_parameters())
        for name, p in self.ref_encoder.named_parameters():
            if name in theirs and theirs[name].shape == p.shape:
                p.copy_(theirs[name])
        for lin in (self.ref_proj_single, self.ref_proj_double, self.tem_proj, self.ref_proj[1]):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self, kinds: Sequence[str], coords: Sequence[Sequence[float]], frames: Sequence[int], clip_frames: Sequence[int]
    ) -> torch.Tensor:
        """Encode N prompts on `frames` of clips with `clip_frames` LLM frames each -> (N, llm_width)."""
        if not (len(kinds) == len(coords) == len(frames) == len(clip_frames)):
            raise ValueError(
                f"kinds/coords/frames/clip_frames: lengths {len(kinds)}/{len(coords)}/{len(frames)}/{len(clip_frames)}"
            )
        weight = self.ref_proj_single.weight
        device, n = weight.device, len(kinds)
        spatial = torch.zeros(n, weight.shape[0], device=device, dtype=weight.dtype)
        for kind, proj, check, width in (
            ("point", self.ref_proj_single, check_point, 2),
            ("box", self.ref_proj_double, check_box, 4),
        ):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            if not rows:
                continue
            for i in rows:
                check(coords[i], f"prompts[{i}]")
            xy = torch.tensor([list(coords[i]) for i in rows], dtype=torch.float32, device=device)
            xy = xy.view(len(rows), width // 2, 2) * self.image_size  # normalised -> SAM input pixels
            labels = torch.tensor([1] if kind == "point" else [2, 3], dtype=torch.int32, device=device)
            with torch.autocast(device_type=device.type, enabled=False):
                tokens, _ = self.ref_encoder(points=(xy, labels.expand(len(rows), -1)), boxes=None, masks=None)
            spatial = spatial.index_copy(0, torch.tensor(rows, device=device), proj(tokens.flatten(1).to(weight.dtype)))
        for i, k in enumerate(kinds):
            if k not in ("point", "box"):
                raise ValueError(f"prompts[{i}].kind: got {k!r}, expected 'point' or 'box' (masks are dense)")
        for i, (f, t) in enumerate(zip(frames, clip_frames)):
            if not 0 <= f < max(t, 1):
                raise ValueError(f"prompts[{i}].frame: got {f}, expected 0 <= frame < {t} (frames of the clip)")
        t = torch.tensor([[f / max(c - 1, 1)] for f, c in zip(frames, clip_frames)], device=device)  # (N, 1)
        temporal = self.tem_proj((self.tem_pe(t) + self.tem_emb.weight.float()).to(weight.dtype))
        if not self.temporal:
            temporal = torch.zeros_like(temporal)
        return self.ref_proj(torch.cat([spatial, temporal], dim=-1))  # (N, 2 * 3 * hidden) -> (N, llm_width)
