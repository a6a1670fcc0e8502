"""Reading the user's media: an image file, a video file (decoded by PyAV) or a folder of frame images.

`probe_media` says what a path holds (kind, frame count, size) without keeping pixels; `read_media` decodes the
frames at chosen indices into a `Media` of (T, 3, H, W) uint8. Files are decoded by Pillow / PyAV only (no shell
commands are built from file names). Every failure is a `PredictInputError` naming `--media` and the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pixelqa.predict.errors import PredictInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class MediaInfo:
    """What a media path holds: kind (image | video | frames), frame count, frame size and frame rate if known."""

    path: str
    kind: str
    num_frames: int
    height: int
    width: int
    fps: float | None = None


@dataclass
class Media:
    """Decoded frames of one media path: frames (T, 3, H, W) uint8 at the original indices `frame_ids`."""

    frames: torch.Tensor
    frame_ids: list[int]
    names: list[str]  # one file stem per frame (the DAVIS layout's PNG names)
    info: MediaInfo
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """image (an image file, or a single frame read) or video for the model."""
        return "image" if self.info.kind == "image" or len(self.frame_ids) == 1 else "video"

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return self.info.height, self.info.width


def _bad(path: str | Path, what: str) -> PredictInputError:
    """The one-line error of an unreadable media path."""
    return PredictInputError(f"--media: {str(path)!r} {what}")


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frames folder, in name order (natural for zero-padded names)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _open_image(path: Path, media: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, or a PredictInputError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        where = "" if Path(media) == path else f" (frame {path.name})"
        raise _bad(media, f"cannot be decoded as an image{where}: {exc}") from None


def _image_size(path: Path, media: str | Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (fully decoded, so that a truncated file is found here)."""
    return tuple(_open_image(path, media).shape[:2])  # type: ignore[return-value]


def _video_frames(path: Path, keep: set[int] | None):
    """Yield (index, (H, W, 3) uint8) of the decoded frames of a video whose index is in `keep` (None: all)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _bad(path, "holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if keep is None or i in keep:
                    yield i, frame.to_ndarray(format="rgb24")
    except PredictInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be decoded as a video or image: {exc}") from None


def probe_media(path: str | Path) -> MediaInfo:
    """Kind, frame count and size of an image, video or frames folder (a video is decoded once to count)."""
    p = Path(path)
    if not p.exists():
        raise _bad(path, "does not exist; expected an image, a video file or a folder of frames")
    if p.is_dir():
        files = frame_files(p)
        if not files:
            raise _bad(path, f"is a folder without frame images ({', '.join(IMAGE_SUFFIXES)})")
        h, w = _image_size(files[0], path)
        return MediaInfo(str(p), "frames", len(files), h, w)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        h, w = _image_size(p, path)
        return MediaInfo(str(p), "image", 1, h, w)
    import av

    count, size, fps = 0, None, None
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise _bad(path, "holds no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            for frame in container.decode(stream):  # counted by decoding: container frame counts can be absent
                size = size or (frame.height, frame.width)
                count += 1
    except PredictInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be decoded as a video or image: {exc}") from None
    if size is None:
        raise _bad(path, "holds no decodable video frame")
    return MediaInfo(str(p), "video", count, int(size[0]), int(size[1]), fps)


def read_media(
    path: str | Path, indices: Sequence[int] | None = None, info: MediaInfo | None = None, progress: bool = False
) -> Media:
    """Decode the frames at `indices` (original indices; None: every frame) into a Media; `progress`: a tqdm bar."""
    info = info or probe_media(path)
    p = Path(path)
    wanted = list(range(info.num_frames)) if indices is None else sorted({int(i) for i in indices})
    for i in wanted:
        if not 0 <= i < info.num_frames:
            raise PredictInputError(f"frame index: got {i}, expected 0 <= index < {info.num_frames} frames")
    arrays: list[np.ndarray] = []
    names: list[str] = []
    if info.kind == "image":
        arrays, names = [_open_image(p, path)], [f"{0:05d}"]
    elif info.kind == "frames":
        files = frame_files(p)
        for i in wanted:
            arrays.append(_open_image(files[i], path))
            names.append(files[i].stem)
    else:
        bar = tqdm(total=len(wanted), desc="decoding frames", unit="frame", disable=not progress)
        got = {}
        for i, rgb in _video_frames(p, keep=set(wanted)):
            got[i] = rgb
            bar.update(1)
        bar.close()
        missing = [i for i in wanted if i not in got]
        if missing:
            raise _bad(path, f"ended before frame {missing[0]} (decoded {len(got)} of the {len(wanted)} wanted)")
        arrays = [got[i] for i in wanted]
        names = [f"{i:05d}" for i in wanted]
    for name, a in zip(names, arrays):
        if a.shape[:2] != (info.height, info.width):
            got, want = f"{a.shape[1]}x{a.shape[0]}", f"{info.width}x{info.height}"
            raise _bad(path, f"frame {name} is {got}, expected {want} like the first frame")
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
    return Media(frames, wanted, names, info)


def media_from_tensor(frames: torch.Tensor, kind: str | None = None) -> Media:
    """A Media around (T, 3, H, W) uint8 frames given in memory (kind: image when T == 1 unless told)."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise PredictInputError(f"media: got {got}, expected a (T, 3, H, W) uint8 tensor or a path")
    t, _, h, w = frames.shape
    kind = kind or ("image" if t == 1 else "video")
    if kind not in ("image", "video"):
        raise PredictInputError(f"kind: got {kind!r}, expected 'image' or 'video'")
    info = MediaInfo("<tensor>", kind, int(t), int(h), int(w))
    return Media(frames, list(range(t)), [f"{i:05d}" for i in range(t)], info)
