"""Uploads and samples: the bytes saved under a fixed name in the session folder, capped, decoded by predict.

Caps (bytes, frames of a video, pixels of a frame) refuse an upload before it is decoded: an image by its header,
a video by what its container says (frame size, frame count, duration x frame rate) and by counting its packets
(demuxed, not decoded; the count stops past the cap). A video that passes is then probed (every frame decoded once
to count, as `python -m pixelqa.predict` does) and checked again; within the caps it is read at most `max_frames`
frames (uniform, both ends: predict's `sam_frame_ids`). These calls block: the app runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pixelqa.demo.messages import shown
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
# a container's duration x frame rate is an estimate (rounded rates, a last frame's length): refused past this factor
DURATION_SLACK = 1.25
# packets counted per frame before refusing: a field-coded (interlaced) stream may store a frame as two packets
PACKETS_PER_FRAME = 2


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


def _too_many(what: str, limits: Limits) -> PredictInputError:
    """The refusal of a video over `max_video_frames`; `what` says how it is known."""
    return PredictInputError(f"upload: the video {what}; expected at most {limits.max_video_frames} frames")


def _declared_span(container, stream) -> float | None:
    """The seconds a video stream declares: its own duration, a webm / mkv track's DURATION tag, else the file's
    duration when the video is its only stream (None: not declared)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "").strip().split(":")
    if len(tag) == 3:
        try:
            return int(tag[0]) * 3600 + int(tag[1]) * 60 + float(tag[2])
        except ValueError:
            pass
    if len(container.streams) == 1 and container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def check_video_header(path: Path, limits: Limits) -> None:
    """Refuse a video over the caps before any frame is decoded: by the frame size and frame count its container
    declares, by its declared duration x frame rate, then by counting its packets (demuxed only, stopped past
    the cap); last, the first frame alone is decoded to check its real size. A file PyAV cannot read is left to
    `probe_media`, whose message says what is wrong."""
    import av

    cap = limits.max_video_frames
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width and height:
                _check_pixels(height, width, limits)
            declared = int(stream.frames or 0)  # 0: the container does not say (webm, mkv, mpg, ...)
            if declared > cap:
                raise _too_many(f"has {declared} frames", limits)
            seconds = _declared_span(container, stream)
            rate = stream.average_rate or stream.guessed_rate
            if seconds and rate and seconds * float(rate) > cap * DURATION_SLACK:
                about = round(seconds * float(rate))
                raise _too_many(f"lasts {seconds:.1f} s at {float(rate):.3g} frames/s (about {about} frames)", limits)
            packets = 0
            for packet in container.demux(stream):
                packets += bool(packet.size)  # the demuxer ends with an empty packet
                if packets > cap * PACKETS_PER_FRAME:
                    raise _too_many(f"has more than {cap} frames", limits)
        with av.open(str(path)) as container:  # the header's size may differ from the frames' (or be missing)
            frame = next(container.decode(container.streams.video[0]), None)
            if frame is not None:
                _check_pixels(frame.height, frame.width, limits)
    except PredictInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError, IndexError):
        return


def open_upload(path: Path, limits: Limits) -> Media:
    """Check a saved upload against the caps (from its header first), probe it, check again and decode it (at
    most `limits.max_frames` frames). Blocking: call it from a worker thread."""
    if path.suffix.lower() in IMAGE_SUFFIXES:  # an image's size is in its header: capped before any pixel is decoded
        _check_pixels(*image_header_size(path, path), limits)
    else:
        check_video_header(path, limits)
    info = probe_media(path)
    _check_pixels(info.height, info.width, limits)
    if info.num_frames > limits.max_video_frames:
        raise _too_many(f"has {info.num_frames} frames", limits)
    return read_media(path, sam_frame_ids(info.num_frames, limits.max_frames), info)


def sample_media(name: object) -> Media:
    """A built-in synthetic sample as Media (the same frames every time)."""
    from pixelqa.data.synthetic import make_sample

    if not isinstance(name, str) or name not in SAMPLES:
        raise PredictInputError(f"sample: got {shown(name)}, expected one of {', '.join(SAMPLES)}")
    task, index = SAMPLES[name]
    sample = make_sample(index, split="val", size=128, task=task)
    frames = torch.from_numpy(sample.decode_frames()).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
    media = media_from_tensor(frames, sample.media.kind)
    media.info.fps = sample.media.fps
    return media
