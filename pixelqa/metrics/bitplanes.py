"""Bit-packed binary clips: 8 pixels per byte along the width, for fast exact morphology on CPU and GPU.

A clip of bool masks (T, H, W) becomes uint8 "bit planes" (T, H, NB) where bit k of byte b holds pixel
x = 8 * b + k (numpy ``packbits(..., bitorder="little")``) and NB is a whole number of int64 words with at least
``min_pad`` zero padding bits after pixel W - 1. A shift along x treats the planes as one flat bit string (two
contiguous byte-shift passes); the padding keeps bits from crossing between rows' pixels. Shifts along y are
slices; counts are 64-bit SWAR popcounts. Every pass moves 1/8 of the bytes of the bool version, and
``PlaneWorkspace`` reuses scratch tensors so a clip can be processed chunk by chunk in cache.

Packing and the popcount byte sum rely on int64 multiplication wrapping modulo 2**64, as the CPU and CUDA kernels
do; the tests check both against numpy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DiskDilationPlanes",
    "PlaneWorkspace",
    "boundary_planes",
    "column_mask",
    "pack_bits",
    "popcount_frames",
    "shift_columns",
]

_GATHER_BITS = 0x0102040810204080  # multiplying 8 bytes of 0/1 by this gathers their low bits into the top byte
_BYTE_SUM = 0x0101010101010101  # multiplying 8 byte counts by this sums them into the top byte
_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def packed_width(width: int, min_pad: int = 1) -> int:
    """Bytes per packed row for ``width`` pixels plus at least ``min_pad`` zero bits: whole int64 words."""
    return 8 * (-(-(width + min_pad) // 64))


def pack_bits(masks: Tensor | tuple[Tensor, ...], min_pad: int = 1, work: PlaneWorkspace | None = None) -> Tensor:
    """Pack (T, H, W) bool masks into (T, H, NB) uint8 bit planes with >= ``min_pad`` zero padding bits per row.

    A tuple of K same-shape clips is packed in one go into (K * T, H, NB), clip after clip.
    """
    clips = masks if isinstance(masks, tuple) else (masks,)
    frames, height, width = clips[0].shape
    device = clips[0].device
    nb = packed_width(width, min_pad)
    shape = (len(clips) * frames, height, nb * 8)
    if work is None:
        padded = torch.zeros(shape, dtype=torch.bool, device=device)
    else:
        padded = work.take(shape, torch.bool, device)
        padded[..., width:] = False
    for index, clip in enumerate(clips):
        padded[index * frames : (index + 1) * frames, :, :width] = clip
    # (T, H, 8 NB) bool -> (T, H, NB) int64 words, each 8 pixels as bytes 0/1 (little-endian: pixel k in byte k).
    words = padded.view(torch.uint8).view(torch.int64)
    words.mul_(_GATHER_BITS)  # byte k's bit lands at bit 56 + k: the top byte is the packed byte (in place: no copy)
    words.bitwise_right_shift_(56)
    out = (
        torch.empty(words.shape, dtype=torch.uint8, device=device)
        if work is None
        else work.take(words.shape, torch.uint8, device)
    )
    return out.copy_(words)  # int64 -> uint8 keeps the low 8 bits (negative values wrap)


def popcount_frames(planes: Tensor, work: PlaneWorkspace | None = None) -> Tensor:
    """Number of set bits per frame of (T, H, NB) uint8 planes (NB a multiple of 8), as (T,) int64."""
    frames = planes.shape[0]
    words = planes.reshape(frames, -1).view(torch.int64)  # (T, H * NB) bytes -> (T, H * NB / 8) words
    work = PlaneWorkspace() if work is None else work
    x, y = work.take_like(words), work.take_like(words)
    # SWAR popcount, in place. Arithmetic right shifts are harmless: each mask clears the sign-filled top bits.
    torch.bitwise_right_shift(words, 1, out=y)
    torch.sub(words, y.bitwise_and_(_M1), out=x)  # 2-bit lane counts
    torch.bitwise_right_shift(x, 2, out=y)
    x.bitwise_and_(_M2).add_(y.bitwise_and_(_M2))  # 4-bit lane counts
    torch.bitwise_right_shift(x, 4, out=y)
    x.add_(y).bitwise_and_(_M4)  # byte counts (<= 8)
    x.mul_(_BYTE_SUM).bitwise_right_shift_(56)  # sum of the 8 byte counts (<= 64, so never negative)
    return x.sum(-1)


def _shift_or_(dst: Tensor, src: Tensor, dx: int, tmp: Tensor) -> None:
    """In place: dst[i] |= src[i + dx] over the planes read as one flat bit string (0 past either end).

    Rows are not isolated: a shift moves bits across row ends through the padding. With zero padding of at least
    |dx| bits per row nothing crosses from one row's pixels into another's; callers size the padding for that.
    All three tensors must be contiguous and of the same shape.
    """
    d, s, t = dst.view(-1), src.view(-1), tmp.view(-1)
    n = d.numel()
    q, r = divmod(abs(dx), 8)
    if q >= n:
        return
    if dx >= 0:  # byte i takes (s[i + q] >> r) | (s[i + q + 1] << (8 - r))
        if r == 0:
            d[: n - q].bitwise_or_(s[q:])
            return
        torch.bitwise_right_shift(s[q:], r, out=t[: n - q])
        d[: n - q].bitwise_or_(t[: n - q])
        if q + 1 < n:
            torch.mul(s[q + 1 :], 1 << (8 - r), out=t[: n - q - 1])  # << via uint8 wrap: faster kernel
            d[: n - q - 1].bitwise_or_(t[: n - q - 1])
    else:  # byte i takes (s[i - q] << r) | (s[i - q - 1] >> (8 - r))
        if r == 0:
            d[q:].bitwise_or_(s[: n - q])
            return
        torch.mul(s[: n - q], 1 << r, out=t[q:])  # << via uint8 wrap: faster kernel
        d[q:].bitwise_or_(t[q:])
        if q + 1 < n:
            torch.bitwise_right_shift(s[: n - q - 1], 8 - r, out=t[q + 1 :])
            d[q + 1 :].bitwise_or_(t[q + 1 :])


def _or_shifted(dst: Tensor, src: Tensor, dx: int, tmp: Tensor) -> None:
    """dst = src | src shifted by ``dx`` (flat bit string, as ``_shift_or_``) without first copying src into dst.

    One pass fewer than ``dst.copy_(src)`` followed by ``_shift_or_``. ``dst`` and ``tmp`` must not alias ``src``.
    """
    d, s, t = dst.view(-1), src.view(-1), tmp.view(-1)
    n = d.numel()
    q, r = divmod(abs(dx), 8)
    if dx == 0 or q >= n:
        d.copy_(s)
        return
    if dx > 0:  # byte i takes s[i] | (s[i + q] >> r) | (s[i + q + 1] << (8 - r))
        d[n - q :].copy_(s[n - q :])
        if r == 0:
            torch.bitwise_or(s[: n - q], s[q:], out=d[: n - q])
            return
        torch.bitwise_right_shift(s[q:], r, out=t[: n - q])
        torch.bitwise_or(s[: n - q], t[: n - q], out=d[: n - q])
        if q + 1 < n:
            torch.mul(s[q + 1 :], 1 << (8 - r), out=t[: n - q - 1])  # << via uint8 wrap: faster kernel
            d[: n - q - 1].bitwise_or_(t[: n - q - 1])
    else:  # byte i takes s[i] | (s[i - q] << r) | (s[i - q - 1] >> (8 - r))
        d[:q].copy_(s[:q])
        if r == 0:
            torch.bitwise_or(s[q:], s[: n - q], out=d[q:])
            return
        torch.mul(s[: n - q], 1 << r, out=t[q:])  # << via uint8 wrap: faster kernel
        torch.bitwise_or(s[q:], t[q:], out=d[q:])
        if q + 1 < n:
            torch.bitwise_right_shift(s[: n - q - 1], 8 - r, out=t[q + 1 :])
            d[q + 1 :].bitwise_or_(t[q + 1 :])


def shift_columns(planes: Tensor, dx: int) -> Tensor:
    """out[..., x] = planes[..., x + dx] (flat bit-string shift; exact within rows whose padding is >= |dx|)."""
    out = torch.zeros_like(planes)
    _shift_or_(out, planes.contiguous(), dx, torch.empty_like(planes))
    return out


@lru_cache(maxsize=256)
def column_mask(width: int, nb: int, device: torch.device) -> Tensor:
    """(NB,) uint8 row mask with the bits of columns 0 .. width - 1 set."""
    bits = torch.zeros(nb * 8, dtype=torch.bool)
    bits[:width] = True
    return pack_bits(bits.view(1, 1, -1), min_pad=0).view(-1)[:nb].to(device)


def boundary_planes(
    planes: Tensor, width: int, work: PlaneWorkspace | None = None, out: Tensor | None = None
) -> Tensor:
    """The DAVIS ``_seg2bmap`` boundary of packed masks (T, H, NB) whose true width is ``width``.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; where it equals east
    and south, differing from south-east is the same as east differing from south-east, so the map is
    (seg ^ east) | (seg ^ south) | (seg ^ south, read one column east). The last row compares east only, the last
    column south only, the corner is 0: dropping column ``width - 1`` of the east term gives exactly that. Padding
    bits of the result are 0. ``out``, when given, is a contiguous tensor shaped like ``planes`` to write into.
    """
    planes = planes.contiguous()
    nb = planes.shape[-1]
    work = PlaneWorkspace() if work is None else work
    tmp, vertical = work.take_like(planes), work.take_like(planes)
    horizontal = work.take_like(planes) if out is None else out
    horizontal.zero_()
    _shift_or_(horizontal, planes, 1, tmp)  # east (the padding reads 0)
    horizontal ^= planes
    horizontal &= column_mask(width - 1, nb, planes.device)  # the last column only compares south
    vertical[:, -1:].zero_()
    torch.bitwise_xor(planes[:, :-1], planes[:, 1:], out=vertical[:, :-1])  # seg ^ south, rows 0 .. H - 2
    horizontal |= vertical
    _shift_or_(horizontal, vertical, 1, tmp)
    horizontal &= column_mask(width, nb, planes.device)  # a shift may carry a bit into the padding
    return horizontal


class PlaneWorkspace:
    """Scratch tensors handed out in order and reused after ``reset()``.

    Processing a clip chunk by chunk with one workspace keeps the working set small and cache-resident, and avoids
    fresh large tensors, whose first touch (page faults) costs more on CPU than the bitwise passes themselves.
    """

    def __init__(self) -> None:
        self._flat: list[Tensor] = []
        self._used = 0

    def reset(self) -> None:
        """Hand the buffers out again from the first (everything taken before is free to overwrite)."""
        self._used = 0

    def take(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` and ``dtype``."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if self._used == len(self._flat):
            self._flat.append(torch.empty(0, dtype=torch.uint8, device=device))
        flat = self._flat[self._used]
        if flat.numel() < nbytes or flat.device != torch.device(device):
            flat = self._flat[self._used] = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self._used += 1
        return flat[:nbytes].view(dtype).view(shape)

    def take_like(self, like: Tensor) -> Tensor:
        """An uninitialised tensor with the shape, dtype and device of ``like``."""
        return self.take(like.shape, like.dtype, like.device)


class DiskDilationPlanes:
    """Exact binary dilation of packed planes by a disk given as row runs (dy, dx_lo, dx_hi), as ``cv2.dilate``.

    Output row y ORs, for every footprint row dy, the input row y + dy widened to x + lo .. x + hi. The rows' runs of
    a disk are nested (a run closer to the centre contains every run farther out), so the dilation is evaluated
    Horner-style from the widest run down:

        D(P) = H[I_n](R_n P | H[E_n-1](R_n-1 P | ... H[E_1](R_1 P)))

    where I_1 ⊃ ... ⊃ I_n are the distinct runs, R_k P ORs the rows dy whose run is I_k (cheap: whole-byte row
    offsets), and H[E] widens by the run E_k = I_k - I_k+1 (Minkowski difference), built by doubling from flat bit
    shifts. Every bit shift is shared by all rows, which is where the time goes. Padding bits of the result may be
    set: AND it with a plane whose padding is 0 before counting.
    """

    def __init__(self, runs: tuple[tuple[int, int, int], ...]) -> None:
        rows: dict[tuple[int, int], list[int]] = {}
        for dy, lo, hi in runs:
            if not lo <= 0 <= hi:
                raise ValueError(f"footprint row dy={dy} spans dx {lo}..{hi}, which does not contain 0")
            rows.setdefault((lo, hi), []).append(dy)
        chain = sorted(rows, key=lambda run: run[0] - run[1])  # widest run first
        for (lo, hi), (inner_lo, inner_hi) in zip(chain, chain[1:]):
            if not (lo <= inner_lo and inner_hi <= hi):
                raise ValueError(
                    f"footprint row runs {lo}..{hi} and {inner_lo}..{inner_hi} are not nested (not a disk)"
                )
        self.runs = runs
        self.stages = [
            (tuple(rows[run]), _widening_shifts(*_run_difference(run, inner))) for run, inner in zip(chain, chain[1:])
        ] + [(tuple(rows[chain[-1]]), _widening_shifts(*chain[-1]))]
        self.max_forward = max(hi + 1 for _, _, hi in runs)
        self.max_backward = max(1 - lo for _, lo, _ in runs)
        # Zero padding bits each packed row needs so that flat shifts never carry pixels between rows.
        self.min_pad = max(self.max_forward, self.max_backward, 1)

    def __call__(self, planes: Tensor, work: PlaneWorkspace | None = None) -> Tensor:
        """Dilate (T, H, NB) uint8 planes (scratch from ``work``; the result is one of its buffers)."""
        work = PlaneWorkspace() if work is None else work
        planes = planes.contiguous()
        tmp, *buffers = (work.take_like(planes) for _ in range(3))
        acc = None
        for dys, shifts in self.stages:
            if acc is None and dys == (0,):
                acc = planes  # read only: the first widening writes into a buffer
            else:
                if acc is None:
                    acc = buffers[0].zero_()
                elif acc is planes:
                    acc = buffers[0].copy_(planes)
                _or_rows_(acc, planes, dys)
            for dx in shifts:  # ping-pong between the two buffers; never write the input
                out = buffers[1] if acc is buffers[0] else buffers[0]
                _or_shifted(out, acc, dx, tmp)
                acc = out
        return buffers[0].copy_(acc) if acc is planes else acc


def _run_difference(outer: tuple[int, int], inner: tuple[int, int]) -> tuple[int, int]:
    """The run E with inner + E = outer (Minkowski sum of integer intervals)."""
    return outer[0] - inner[0], outer[1] - inner[1]


def _widening_shifts(lo: int, hi: int) -> tuple[int, ...]:
    """Shifts dx that widen a single column to the run lo .. hi by doubling: each step ORs in a copy shifted by dx.

    A run a .. b ORed with itself shifted by s (|s| <= its length) becomes a .. b + s (or a + s .. b for s < 0).
    """
    shifts, a, b = [], 0, 0
    while a > lo or b < hi:
        length = b - a + 1
        if b < hi:
            step = min(length, hi - b)
            b += step
        else:
            step = -min(length, a - lo)
            a += step
        shifts.append(step)
    return tuple(shifts)


def _or_rows_(out: Tensor, planes: Tensor, dys: tuple[int, ...]) -> None:
    """In place: out[:, y] |= planes[:, y + dy] for every dy (rows past either edge read 0)."""
    height = planes.shape[1]
    for dy in dys:
        if abs(dy) >= height:
            continue
        y0, y1 = max(0, -dy), height - max(0, dy)
        out[:, y0:y1].bitwise_or_(planes[:, y0 + dy : y1 + dy])


def unpack_bits(planes: Tensor, width: int) -> np.ndarray:
    """(T, H, NB) planes back to (T, H, width) bool numpy masks (for tests and debugging)."""
    return np.unpackbits(planes.cpu().numpy(), axis=-1, bitorder="little")[..., :width].astype(bool)
