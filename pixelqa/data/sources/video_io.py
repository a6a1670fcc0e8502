"""Frame access for the video converters: frame folders (JPEG/PNG files) and mp4 files (OpenCV).

Frames stay encoded: a JPEG/PNG file on disk is carried over byte for byte (no re-encoding, no quality
loss); only frames decoded from a video container are encoded again (JPEG), and frame files carrying an EXIF
rotation, which OpenCV (the schema's decoder) would apply while annotations and the declared size are in stored-pixel
order: those are re-encoded in stored order, as `_image_files.read_image` does for images. Everything reads lazily,
one sample at a time, so converters stream.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from pixelqa.data.schema import encode_frame
from pixelqa.data.sources._image_files import stored_orientation

_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


@dataclass
class FrameSet:
    """Encoded frames of one sample, all of one extension and one size (H, W)."""

    frames: list[bytes]
    ext: str
    size: tuple[int, int]
    fps: float | None = None


def frame_ext(path: str) -> str:
    """The schema extension ('jpg' or 'png') of an image file path."""
    ext = _EXTS.get(os.path.splitext(path)[1].lower())
    if ext is None:
        raise ValueError(f"path: got {path!r}, expected a .jpg, .jpeg or .png image file")
    return ext


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file, read from its header only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frame file not found: {path}")
    with Image.open(path) as im:
        w, h = im.size
    return int(h), int(w)


def read_frame_files(paths: Sequence[str]) -> FrameSet:
    """Read image files as they are (bytes); all must share one extension and one size."""
    if not paths:
        raise ValueError("paths: got an empty list, expected at least one frame file")
    exts = {frame_ext(p) for p in paths}
    frames: list[bytes] = []
    size: tuple[int, int] | None = None
    if len(exts) > 1:
        # Mixed JPEG/PNG folders exist (Inst-IT); the schema wants one extension, so re-encode as JPEG.
        for p in paths:
            rgb = read_rgb(p)
            if size is None:
                size = rgb.shape[:2]
            elif rgb.shape[:2] != size:
                raise ValueError(f"frame {p}: size {rgb.shape[:2]}, expected {size} like the first frame")
            frames.append(encode_frame(rgb, "jpg"))
        return FrameSet(frames, "jpg", size)
    ext = exts.pop()
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"frame file not found: {p}")
        with open(p, "rb") as f:
            data = f.read()
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size  # stored size: what the annotations and the frames as kept are in
                turned = stored_orientation(im, data) != 1
        except OSError as e:
            raise ValueError(f"frame file {p}: cannot be decoded ({e}), expected a JPEG or PNG image") from e
        s = (int(h), int(w))
        if size is None:
            size = s
        elif s != size:
            raise ValueError(f"frame {p}: size {s}, expected {size} like the first frame of the sample")
        # OpenCV would turn an EXIF-rotated frame at decode: re-encoded in stored order, so bytes and size agree
        frames.append(encode_frame(read_rgb(p), ext) if turned else data)
    return FrameSet(frames, ext, size)


def read_rgb(path: str) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB in stored pixel order (its EXIF orientation is not applied:
    annotations are in stored order)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frame file not found: {path}")
    arr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        raise ValueError(f"frame file {path}: OpenCV cannot decode it, expected a JPEG or PNG image")
    return np.ascontiguousarray(arr[:, :, ::-1])


def read_label_png(path: str) -> np.ndarray:
    """A palette / grayscale label PNG -> (H, W) integer array of the stored indices (not RGB colours)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16", "1"):
            raise ValueError(f"annotation {path}: PIL mode {im.mode!r}, expected a palette ('P') or grayscale PNG")
        return np.array(im).astype(np.int64)


def video_info(path: str) -> tuple[int, float, tuple[int, int]]:
    """(frame count, fps, (H, W)) of a video file as OpenCV reports them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(f"video {path}: OpenCV cannot open it, expected an mp4/avi/webm file")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 0.0
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    finally:
        cap.release()
    return n, fps, (h, w)


def read_video_frames(path: str, indices: Sequence[int]) -> list[np.ndarray]:
    """Decode the frames at `indices` (0-based, any order, repeats allowed) as (H, W, 3) uint8 RGB.

    Reads the file once, front to back, grabbing (not decoding) the frames that are not wanted.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    wanted = sorted({int(i) for i in indices})
    if wanted and wanted[0] < 0:
        raise ValueError(f"indices: got {wanted[0]}, expected frame indices >= 0")
    cap = cv2.VideoCapture(path)
    got: dict[int, np.ndarray] = {}
    try:
        if not cap.isOpened():
            raise ValueError(f"video {path}: OpenCV cannot open it, expected an mp4/avi/webm file")
        pos = 0
        for target in wanted:
            while pos < target:
                if not cap.grab():
                    break
                pos += 1
            if pos != target:
                break
            ok, bgr = cap.read()
            if not ok:
                break
            got[target] = np.ascontiguousarray(bgr[:, :, ::-1])
            pos += 1
    finally:
        cap.release()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ValueError(f"video {path}: frames {missing[:5]} could not be decoded (the video has {len(got)} of them)")
    return [got[int(i)] for i in indices]


def encode_video_frames(path: str, indices: Sequence[int], quality: int = 95) -> FrameSet:
    """Decode `indices` from a video file and re-encode them as JPEG."""
    rgbs = read_video_frames(path, indices)
    _, fps, _ = video_info(path)
    frames = [encode_frame(rgb, "jpg", quality) for rgb in rgbs]
    return FrameSet(frames, "jpg", rgbs[0].shape[:2], fps if fps > 0 else None)


def uniform_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over [0, total) (centre of each segment); all of them if total <= count."""
    if total < 1:
        raise ValueError(f"total: got {total}, expected at least 1 frame")
    if count < 1:
        raise ValueError(f"count: got {count}, expected at least 1")
    if total <= count:
        return list(range(total))
    seg = total / count
    return [min(total - 1, int(seg * i + seg / 2)) for i in range(count)]
