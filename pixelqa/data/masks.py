"""Binary masks as COCO RLE, through pycocotools only (no hand-written run-length code).

The canonical RLE of PixelQA is ``{"size": [H, W], "counts": str}`` with the compressed counts string
decoded as ASCII, so it is JSON-ready. Every function accepts an RLE in any COCO form (compressed
bytes/str counts, or uncompressed list counts) and returns the canonical form.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Rle = dict  # {"size": [H, W], "counts": str}


def _to_coco(rle: Rle) -> dict:
    """An RLE in the form pycocotools' C functions take: compressed, bytes counts."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"rle: got {rle!r:.80}, expected a COCO RLE dict with 'size' and 'counts'")
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE -> compressed
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise TypeError(f"rle.counts: got {type(counts).__name__}, expected str, bytes or list of ints")
    return {"size": [h, w], "counts": counts}


def _canonical(coco: dict) -> Rle:
    """pycocotools output -> JSON-ready canonical RLE."""
    counts = coco["counts"]
    return {
        "size": [int(coco["size"][0]), int(coco["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def normalize(rle: Rle) -> Rle:
    """Any COCO RLE (list or bytes counts) -> canonical {"size": [H, W], "counts": str}."""
    return _canonical(_to_coco(rle))


def encode(mask: np.ndarray) -> Rle:
    """(H, W) bool/0-1 array -> canonical RLE."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: got shape {mask.shape}, expected (H, W)")
    return _canonical(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8) > 0, dtype=np.uint8)))


def decode(rle: Rle) -> np.ndarray:
    """RLE -> (H, W) bool array."""
    return mask_utils.decode(_to_coco(rle)).astype(bool)


def decode_stack(rles: Sequence[Rle | None], size: tuple[int, int]) -> np.ndarray:
    """RLEs of one (H, W) size -> (N, H, W) bool; None (not annotated) -> all False.

    The same values as stacking `decode` of each, in one pycocotools call: it writes the masks as one (H, W, N)
    column-major array, i.e. (N, W, H) in row order, and the result is that array's (N, H, W) transposed view (no
    copy; not C-contiguous, which `torch.from_numpy` takes as is). A None is decoded as the empty RLE of the size.
    """
    h, w = int(size[0]), int(size[1])
    if not rles:
        return np.zeros((0, h, w), dtype=bool)
    blank = None
    coco = []
    for i, rle in enumerate(rles):
        if rle is None:
            blank = blank or {"size": [h, w], "counts": _empty_counts(h, w)}
            coco.append(blank)
            continue
        try:
            rh, rw = rle["size"]
            counts = rle["counts"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"rles[{i}]: got {rle!r:.80}, expected a COCO RLE dict with 'size' and 'counts'") from None
        if rh != h or rw != w:  # pycocotools sizes its output by the first RLE: a mismatch must not reach it
            raise ValueError(f"rles[{i}].size: got {list(rle['size'])}, expected {[h, w]}")
        if isinstance(counts, str):  # the canonical form: pycocotools takes it as is
            coco.append(rle)
        else:
            coco.append(_to_coco(rle))
    return mask_utils.decode(coco).view(bool).transpose(2, 0, 1)  # (H, W, N) column-major -> (N, H, W) view


@lru_cache(maxsize=64)
def _empty_counts(h: int, w: int) -> bytes:
    """Compressed counts of the all-False (h, w) mask."""
    return mask_utils.encode(np.zeros((h, w, 1), dtype=np.uint8, order="F"))[0]["counts"]


def empty(height: int, width: int) -> Rle:
    """The RLE of an all-False (H, W) mask."""
    return encode(np.zeros((height, width), dtype=bool))


def from_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> Rle:
    """COCO polygons [[x1, y1, x2, y2, ...], ...] -> one merged RLE of size (height, width)."""
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not polys:
        return empty(height, width)
    rles = mask_utils.frPyObjects(polys, height, width)
    return _canonical(mask_utils.merge(rles))


def merge(rles: Sequence[Rle]) -> Rle:
    """Union of RLEs of the same size."""
    if not rles:
        raise ValueError("rles: got an empty list, expected at least one RLE")
    coco = [_to_coco(r) for r in rles]
    sizes = {tuple(c["size"]) for c in coco}
    if len(sizes) != 1:
        raise ValueError(f"rles: got sizes {sorted(sizes)}, expected one common size")
    return _canonical(mask_utils.merge(coco, intersect=False))


def area(rle: Rle) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_to_coco(rle)))


def visible_frames(by_frame: dict[int, Rle | None]) -> list[int]:
    """The frames (sorted) whose mask in `by_frame` (an ObjectTrack's masks) has a foreground pixel."""
    return sorted(f for f, r in by_frame.items() if r is not None and area(r) > 0)


def to_box(rle: Rle) -> tuple[float, float, float, float] | None:
    """Tight box (x1, y1, x2, y2) in pixels (x2 = x1 + width), or None for an empty mask."""
    coco = _to_coco(rle)
    if mask_utils.area(coco) == 0:
        return None
    x, y, w, h = (float(v) for v in mask_utils.toBbox(coco))
    return (x, y, x + w, y + h)


def iou(a: Rle, b: Rle) -> float:
    """Intersection over union of two RLEs of the same size (0 when both are empty)."""
    ca, cb = _to_coco(a), _to_coco(b)
    if list(ca["size"]) != list(cb["size"]):
        raise ValueError(f"b.size: got {cb['size']}, expected a.size {ca['size']}")
    union = mask_utils.area(mask_utils.merge([ca, cb], intersect=False))
    if union == 0:
        return 0.0
    return float(mask_utils.area(mask_utils.merge([ca, cb], intersect=True)) / union)


def resize(mask: np.ndarray | Rle, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask (array or RLE) to (H, W); returns a bool array."""
    arr = decode(mask) if isinstance(mask, dict) else np.asarray(mask, dtype=bool)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size: got {size}, expected two positive integers (H, W)")
    if arr.shape == (h, w):
        return arr.copy()
    return cv2.resize(arr.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def resize_rle(rle: Rle, size: tuple[int, int]) -> Rle:
    """Nearest-neighbour resize of an RLE to (H, W), returned as RLE."""
    return encode(resize(rle, size))
