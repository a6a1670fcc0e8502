"""Functional cores of the mask metrics: DAVIS region similarity J and boundary F, vectorised over frames.

Both equal the DAVIS 2017 evaluation (davisvideochallenge/davis2017-evaluation: ``db_eval_iou``,
``db_eval_boundary``) frame by frame, but work on whole (T, H, W) clips in pure torch, so they run unchanged on
CUDA tensors:

- the clips are cropped to the box holding any foreground (plus a one-pixel margin), which changes no count;
- the masks are packed 8 pixels per byte (``pixelqa.metrics.bitplanes``): every later pass moves 1/8 of the bytes;
- boundary maps come from shifted XORs of the packed masks (the ``_seg2bmap`` rule, border row and column included);
- the tolerance dilation by the scikit-image disk (what ``cv2.dilate`` does in the reference) is split into the
  footprint's rows: one horizontal window per row, built from doubled shifted ORs, then ORed in at the row's
  vertical offset. It is the exact same binary dilation, not an approximation;
- counts are 64-bit popcounts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from pixelqa.metrics.bitplanes import (
    DiskDilationPlanes,
    PlaneWorkspace,
    boundary_planes,
    pack_bits,
    popcount_frames,
)

__all__ = [
    "as_mask_clip",
    "boundary_f",
    "boundary_radius",
    "count_true",
    "dilate_disk",
    "disk_footprint",
    "jaccard",
    "jaccard_and_boundary_f",
    "seg_to_boundary",
    "unpack_planes",
]


def as_mask_clip(masks: Tensor | np.ndarray, name: str) -> tuple[Tensor, bool]:
    """Validate a binary mask or clip and return it as a (T, H, W) bool tensor plus whether it was (H, W)."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (H, W) or (T, H, W), got {type(masks).__name__}"
        )
    if masks.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (T, H, W), got shape {tuple(masks.shape)}")
    if masks.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(masks.shape)}): T, H and W must all be >= 1")
    if masks.dtype != torch.bool:
        if masks.is_complex():
            raise TypeError(f"{name} must be bool, integer or float, got dtype {masks.dtype}")
        non_binary = (masks != 0) & (masks != 1)
        if bool(non_binary.any()):
            bad = masks[non_binary][0].item()
            raise ValueError(
                f"{name} must be binary (bool, or 0/1 values), found value {bad} (dtype {masks.dtype}); "
                "threshold probabilities or logits first"
            )
        masks = masks != 0
    squeezed = masks.ndim == 2
    if squeezed:
        masks = masks.unsqueeze(0)  # (H, W) -> (1, H, W)
    return masks, squeezed


def _check_pair(preds: Tensor | np.ndarray, target: Tensor | np.ndarray) -> tuple[Tensor, Tensor, bool]:
    """Validate a prediction/target pair: same shape, same device, binary."""
    p, squeezed = as_mask_clip(preds, "preds")
    t, _ = as_mask_clip(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"preds and target must have the same shape, got preds {tuple(p.shape)} "
            f"and target {tuple(t.shape)}" + (" (after adding T=1)" if squeezed else "")
        )
    if p.device != t.device:
        raise ValueError(f"preds and target must be on the same device, got {p.device} and {t.device}")
    return p, t, squeezed


@contextmanager
def _calling_thread_only(device: torch.device) -> Iterator[None]:
    """Run the block's CPU kernels on the calling thread alone; restore torch's intra-op thread count after.

    The metrics are many short, memory-bound passes over cache-sized chunks. A second intra-op thread gains little on
    an idle machine, and on a busy one every pass waits at its barrier for a descheduled thread: 7x slower on two
    shared cores. Results do not depend on the thread count. A no-op off CPU or when torch already uses one thread.
    (OpenMP's count is per calling thread; torch's global default changes for the block only, so a thread that
    starts torch work for the first time during the block would start with one thread.)
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _float_dtype(device: torch.device) -> torch.dtype:
    """float64 for the arithmetic where the device has it (exact ratios), float32 on MPS."""
    return torch.float32 if device.type == "mps" else torch.float64


# Byte lanes summed per int64 word before lanes are split (240 ones per lane stay below 256).
_LANE_GROUP = 240
_BUFFER_ALIGN = 8 * _LANE_GROUP


def _frame_buffer(frames: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A zeroed (T, N) bool buffer padded for ``_count_buffer`` and its (T, H, W) image view."""
    n = height * width
    buffer = torch.zeros(frames, -(-n // _BUFFER_ALIGN) * _BUFFER_ALIGN, dtype=torch.bool, device=device)
    return buffer, buffer[:, :n].view(frames, height, width)  # (T, N) -> (T, H, W), shares memory


def _count_buffer(buffer: Tensor) -> Tensor:
    """True pixels per frame of a ``_frame_buffer`` (T, N) bool buffer whose padding is False, as (T,) int64."""
    frames = buffer.shape[0]
    # Read 8 bool bytes (each 0 or 1) as one int64 word: 8x fewer elements than summing bools.
    words = buffer.view(torch.uint8).view(torch.int64)  # (T, N) -> (T, N / 8)
    # Sum groups of words: each byte lane of a sum holds at most _LANE_GROUP < 256, so lanes never carry.
    return _sum_byte_lanes(words.view(frames, _LANE_GROUP, -1).sum(1))  # (T, G, N / 8G) -> (T, N / 8G)


def count_true(masks: Tensor) -> Tensor:
    """Number of True pixels per frame of a (T, ...) bool tensor, as (T,) int64."""
    frames = masks.shape[0]
    flat = masks.reshape(frames, -1)  # (T, ...) -> (T, N)
    if flat.shape[1] % 8 or not flat.is_contiguous() or flat.storage_offset() % 8:
        buffer, view = _frame_buffer(frames, 1, flat.shape[1], masks.device)
        view[:, 0].copy_(flat)
        return _count_buffer(buffer)
    # Read 8 bool bytes (each 0 or 1) as one int64 word: 8x fewer elements than summing bools.
    words = flat.view(torch.uint8).view(torch.int64)  # (T, N) -> (T, N / 8)
    n_words = words.shape[1]
    grouped = n_words - n_words % _LANE_GROUP
    # Sum groups of words: each byte lane of a sum holds at most _LANE_GROUP < 256, so lanes never carry.
    lanes = [words[:, :grouped].reshape(frames, _LANE_GROUP, -1).sum(1), words[:, grouped:].sum(1, keepdim=True)]
    return _sum_byte_lanes(torch.cat(lanes, dim=1))


def _sum_byte_lanes(lanes: Tensor) -> Tensor:
    """Sum of the 8 byte lanes of (T, K) int64 words over K, as (T,) int64."""
    total = torch.zeros(lanes.shape[0], dtype=torch.int64, device=lanes.device)
    for byte in range(8):
        total += ((lanes >> (8 * byte)) & 0xFF).sum(-1)
    return total


def _mask_box(p: Tensor, t: Tensor) -> tuple[slice, slice] | None:
    """Rows and columns holding any foreground of either clip in any frame, grown by one pixel; None if empty.

    The margin keeps every boundary pixel (they sit on, or one pixel above/left of, foreground) and a zero row and
    column past the foreground, so boundary maps computed on the crop equal those of the full frame.
    """
    union = p.view(torch.uint8).amax(0) | t.view(torch.uint8).amax(0)  # (T, H, W) -> (H, W)
    rows = torch.nonzero(union.amax(1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(union.amax(0)).flatten()
    height, width = union.shape
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, width)
    return slice(y0, y1), slice(x0, x1)


def boundary_radius(height: int, width: int, bound_th: float) -> float:
    """Tolerance radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * image diagonal)."""
    if not math.isfinite(bound_th) or bound_th < 0:
        raise ValueError(f"bound_th must be a finite number >= 0, got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * float(np.linalg.norm((height, width)))))


@lru_cache(maxsize=64)
def disk_footprint(radius: float) -> np.ndarray:
    """Disk footprint equal to ``skimage.morphology.disk(radius)`` (grid ``arange(-r, r + 1)``, x^2 + y^2 <= r^2)."""
    grid = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(grid, grid)
    footprint = (xx**2 + yy**2) <= radius**2
    footprint.setflags(write=False)
    return footprint


@lru_cache(maxsize=64)
def _row_runs(radius: float) -> tuple[tuple[int, int, int], ...]:
    """The disk as (dy, dx_lo, dx_hi) runs, one per non-empty row, in OpenCV's anchor-at-centre convention."""
    footprint = disk_footprint(radius)
    anchor_y, anchor_x = footprint.shape[0] // 2, footprint.shape[1] // 2  # cv2's default anchor
    runs = []
    for row_index, row in enumerate(footprint):
        cols = np.flatnonzero(row)
        if cols.size == 0:
            continue
        if cols[-1] - cols[0] + 1 != cols.size:  # a disk row is always one run; guard the decomposition anyway
            raise ValueError(f"footprint row {row_index} of disk({radius}) is not contiguous")
        runs.append((row_index - anchor_y, int(cols[0]) - anchor_x, int(cols[-1]) - anchor_x))
    return tuple(runs)


def unpack_planes(planes: Tensor, width: int) -> Tensor:
    """(T, H, NB) uint8 bit planes back to (T, H, width) bool masks."""
    bits = torch.arange(8, device=planes.device, dtype=torch.uint8)
    unpacked = (planes.unsqueeze(-1) >> bits) & 1  # (T, H, NB) -> (T, H, NB, 8)
    return unpacked.flatten(-2)[..., :width].bool()


def seg_to_boundary(masks: Tensor) -> Tensor:
    """One-pixel-wide boundary maps of (T, H, W) bool masks, the DAVIS ``_seg2bmap`` rule.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (beyond the image the
    neighbour is 0); the last row only compares east, the last column only south, and the corner is never a boundary.
    """
    return unpack_planes(boundary_planes(pack_bits(masks), masks.shape[-1]), masks.shape[-1])


def dilate_disk(masks: Tensor, radius: float) -> Tensor:
    """Binary dilation of (T, H, W) bool masks by ``disk_footprint(radius)``, as ``cv2.dilate`` computes it."""
    dilation = DiskDilationPlanes(_row_runs(radius))
    planes = pack_bits(masks, dilation.min_pad)
    return unpack_planes(dilation(planes), masks.shape[-1])


def _jaccard_from_counts(inter: Tensor, union: Tensor) -> Tensor:
    """J = intersection / union, 1 where the union is empty (DAVIS convention), as float32."""
    dtype = _float_dtype(inter.device)
    ratio = inter.to(dtype) / union.clamp(min=1).to(dtype)
    return torch.where(union > 0, ratio, torch.ones_like(ratio)).float()


def _f_from_counts(n_pred: Tensor, n_target: Tensor, pred_match: Tensor, target_match: Tensor) -> Tensor:
    """Boundary F from boundary and match counts, with the DAVIS conventions for empty boundaries, as float32."""
    dtype = _float_dtype(n_pred.device)
    has_pred, has_target = n_pred > 0, n_target > 0
    precision = pred_match.to(dtype) / n_pred.clamp(min=1).to(dtype)
    recall = target_match.to(dtype) / n_target.clamp(min=1).to(dtype)
    # No predicted boundary -> P = 1 (R = 0 unless the target has none either); no target boundary -> R = 1, P = 0.
    ones, zeros = torch.ones_like(precision), torch.zeros_like(precision)
    precision = torch.where(has_pred, torch.where(has_target, precision, zeros), ones)
    recall = torch.where(has_target, torch.where(has_pred, recall, zeros), ones)
    denom = precision + recall
    f = torch.where(denom > 0, 2 * precision * recall / torch.where(denom > 0, denom, ones), zeros)
    return f.float()


# Full-frame pixels per chunk of frames: a chunk's packed planes and scratch stay within a few MB (cache-friendly,
# reused), and each chunk is cropped to its own foreground box, which stays tight while objects move.
_CHUNK_PIXELS = 1 << 22
_COUNTS = 6  # intersection, union, predicted and target boundary, their matches within the tolerance


def _scores(p: Tensor, t: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Per-frame J and F (tolerance ``radius`` in pixels) of validated (T, H, W) bool clips."""
    frames, height, width = p.shape
    dilation = DiskDilationPlanes(_row_runs(radius))
    work = PlaneWorkspace()
    chunk = max(1, _CHUNK_PIXELS // (height * width))
    counts: list[Tensor] = []
    for start in range(0, frames, chunk):
        p_chunk, t_chunk = p[start : start + chunk], t[start : start + chunk]
        n = p_chunk.shape[0]
        box = _mask_box(p_chunk, t_chunk)
        if box is None:  # both empty in every frame: all counts 0, which gives J = 1 and F = 1
            counts.append(torch.zeros(_COUNTS, n, dtype=torch.int64, device=p.device))
            continue
        work.reset()  # every buffer of the previous chunk is free again
        # (n, H, W) -> (n, h, w) crops (exact, see _mask_box), packed together: (2n, h, NB) uint8, [preds; target].
        planes = pack_bits((p_chunk[:, box[0], box[1]], t_chunk[:, box[0], box[1]]), dilation.min_pad, work)
        # Everything to count goes into one (6n, h, NB) buffer, counted by a single popcount pass.
        stats = work.take((_COUNTS * n, *planes.shape[1:]), torch.uint8, p.device)
        torch.bitwise_and(planes[:n], planes[n:], out=stats[:n])
        torch.bitwise_or(planes[:n], planes[n:], out=stats[n : 2 * n])
        boundaries = boundary_planes(planes, box[1].stop - box[1].start, work, out=stats[2 * n : 4 * n])
        dilated = dilation(boundaries, work)  # tolerance disk around [preds; target] boundaries
        # Precision: predicted boundary pixels within the tolerance of the target boundary; recall: the reverse.
        torch.bitwise_and(dilated[n:], boundaries[:n], out=stats[4 * n : 5 * n])
        torch.bitwise_and(dilated[:n], boundaries[n:], out=stats[5 * n :])
        counts.append(popcount_frames(stats, work).view(_COUNTS, n))
    inter, union, *boundary_counts = torch.cat(counts, dim=1)
    return _jaccard_from_counts(inter, union), _f_from_counts(*boundary_counts)


def jaccard(preds: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor:
    """Region similarity J (IoU) per frame of binary (H, W) or (T, H, W) masks; an empty union gives J = 1.

    Returns a float32 tensor of shape () or (T,), equal to DAVIS 2017 ``db_eval_iou``.
    """
    p, t, squeezed = _check_pair(preds, target)
    with _calling_thread_only(p.device):
        j = _jaccard(p.contiguous(), t.contiguous())
    return j[0] if squeezed else j


def _jaccard(p: Tensor, t: Tensor) -> Tensor:
    """Per-frame J of validated, contiguous (T, H, W) bool clips."""
    # Whole frames, no crop or packing: one AND pass and word-lane counts are cheaper than both. Chunk by chunk, so
    # each chunk is read from memory once and counted three times from cache; the AND goes into one reused buffer.
    work = PlaneWorkspace()
    chunk = max(1, _CHUNK_PIXELS // (p.shape[1] * p.shape[2]))
    inter, area = [], []
    for start in range(0, p.shape[0], chunk):
        work.reset()
        p_chunk, t_chunk = p[start : start + chunk], t[start : start + chunk]
        both = work.take(p_chunk.shape, torch.bool, p.device)
        inter.append(count_true(torch.bitwise_and(p_chunk, t_chunk, out=both)))
        area.append(count_true(p_chunk) + count_true(t_chunk))
    inter_counts = torch.cat(inter)
    return _jaccard_from_counts(inter_counts, torch.cat(area) - inter_counts)


def boundary_f(preds: Tensor | np.ndarray, target: Tensor | np.ndarray, bound_th: float = 0.008) -> Tensor:
    """Boundary F-measure per frame of binary (H, W) or (T, H, W) masks, the DAVIS 2017 definition.

    ``bound_th`` < 1 is a fraction of the image diagonal (radius ceil(bound_th * sqrt(H^2 + W^2))), >= 1 a radius
    in pixels. Returns a float32 tensor of shape () or (T,), equal to DAVIS ``db_eval_boundary``.
    """
    return jaccard_and_boundary_f(preds, target, bound_th)[1]


def jaccard_and_boundary_f(
    preds: Tensor | np.ndarray, target: Tensor | np.ndarray, bound_th: float = 0.008
) -> tuple[Tensor, Tensor]:
    """``(jaccard(preds, target), boundary_f(preds, target, bound_th))`` from one packing of the clips."""
    p, t, squeezed = _check_pair(preds, target)
    radius = boundary_radius(p.shape[-2], p.shape[-1], float(bound_th))  # from the full frame, not the crop
    with _calling_thread_only(p.device):
        j, f = _scores(p, t, radius)
    return (j[0], f[0]) if squeezed else (j, f)
