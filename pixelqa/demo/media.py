"""Uploads and samples: the bytes saved under a fixed name in the session folder, capped, decoded by predict.

Caps (bytes, frames of a video, pixels of a frame) refuse an upload before it is decoded in full; a video within
them is read at most `max_frames` frames (uniform, both ends: predict's `sam_frame_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.frames import sam_frame_ids
from pixelqa.predict.media import (
    IMAGE_SUFFIXES,
    Media,
    image_header_size,
    media_from_tensor,
    probe_media,
    read_media,
)

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif")
# the built-in samples: synthetic shapes (pixelqa.data.synthetic), made on request, nothing stored
SAMPLES = {"shapes-video": ("pixelqa", 3), "shapes-image": ("res", 0)}


@dataclass
class Limits:
    """What an upload may be: bytes, video frames (longer videos are refused), frames read, pixels per frame."""

    max_bytes: int = 50 * 1024 * 1024
    max_video_frames: int = 900
    max_frames: int = 32
    max_pixels: int = 1920 * 1080


def upload_suffix(name: str) -> str:
    """The suffix an upload is saved with, from its file name; anything but an image or video is refused."""
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise PredictInputError(
            f"upload: {name!r} is not an image ({' '.join(IMAGE_SUFFIXES)}) or a video ({' '.join(VIDEO_SUFFIXES)})"
        )
    return suffix


def check_size(n_bytes: int, limits: Limits) -> None:
    """Refuse an upload over the byte cap."""
    if n_bytes > limits.max_bytes:
        raise PredictInputError(
            f"upload: {n_bytes / 2**20:.1f} MiB is too large; expected at most {limits.max_bytes / 2**20:.0f} MiB"
        )


def _check_pixels(height: int, width: int, limits: Limits) -> None:
    """Refuse frames over the pixel cap."""
    if height * width > limits.max_pixels:
        raise PredictInputError(
            f"upload: frames of {width}x{height} are too large; expected at most {limits.max_pixels} pixels"
        )


def open_upload(path: Path, limits: Limits) -> Media:
    """Probe, check against the caps and decode a saved upload (at most `limits.max_frames` frames)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:  # an image's size is in its header: capped before any pixel is decoded
        _check_pixels(*image_header_size(path, path), limits)
    info = probe_media(path)
    _check_pixels(info.height, info.width, limits)
    if info.num_frames > limits.max_video_frames:
        raise PredictInputError(
            f"upload: the video has {info.num_frames} frames; expected at most {limits.max_video_frames}"
        )
    return read_media(path, sam_frame_ids(info.num_frames, limits.max_frames), info)


def sample_media(name: str) -> Media:
    """A built-in synthetic sample as Media (the same frames every time)."""
    from pixelqa.data.synthetic import make_sample

    if name not in SAMPLES:
        raise PredictInputError(f"sample: got {name!r}, expected one of {', '.join(SAMPLES)}")
    task, index = SAMPLES[name]
    sample = make_sample(index, split="val", size=128, task=task)
    frames = torch.from_numpy(sample.decode_frames()).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
    media = media_from_tensor(frames, sample.media.kind)
    media.info.fps = sample.media.fps
    return media
