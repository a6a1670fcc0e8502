"""Reading the user's media: an image file, a video file (decoded by PyAV) or a folder of frame images.

`probe_media` says what a path holds (kind, frame count, size) without keeping pixels; `read_media` decodes the
frames at chosen indices into a `Media` of (T, 3, H, W) uint8. Files are decoded by Pillow / PyAV only (no shell
commands are built from file names). Every failure is a `PredictInputError` naming `--media` and the path.

A frames folder's frames are its image files (FRAME_SUFFIXES, any case) in time order: by the number in their names
(`frame_2` before `frame_10`, as the data converters order them: `pixelqa.data.sources._frame_order`), names without
a number by name; a prompt's frame `t` is the position in that order. Hidden files (`.DS_Store`, macOS's `._*`
twins, `.thumb.png`) are skipped silently, other files with a note (`media_warnings`); two frames of one name
(`00000.jpg`, `00000.png`) are refused, since outputs are named by it. A file whose suffix names no image or video
format (or none) is sniffed by Pillow: an image when Pillow reads it as one picture, else a video (PyAV). An image
file of several pages or frames (multi-page TIFF, APNG, animated WebP) is read at its first, with a note.
Images of more than 8 bits per sample (16-bit PNG / TIFF, 32-bit integer or float) are scaled to 8 bits as the
data converters do (`pixelqa.data.sources._image_files.eight_bit`), not clipped.

Images and frames are turned upright by their EXIF orientation (`ImageOps.exif_transpose`), so pixel coordinates
are those of the picture as a viewer shows it; `Media.meta["exif_orientation"]` names the frames that were turned.
Videos likewise follow their display matrix (a phone's portrait clip is stored as landscape frames plus a quarter
turn that every player applies): each frame is turned as FFmpeg's own autorotation would, and
`MediaInfo.orientation` gives that turn in EXIF numbering (6: a quarter turn clockwise).
A video that decodes to fewer frames than its container declares (a cut download, say) is used as far as it
decodes rather than refused (the frames that decode are sound, and a container's count can overstate for a sound
file too, e.g. with edit lists); `media_warnings` says so in one line and run.json records both counts. webm and
mkv declare no frame count but a duration: one whose frames stop short of it is reported the same way, and so
is a video whose decoding fails part-way (damaged data in the middle): the frames before the damage are used.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FRAME_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")  # a frames folder's frames (a GIF frame: its first picture)
# files read as videos without asking Pillow (a .gif or an unknown suffix is sniffed: one picture or several)
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".ogv")
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 2..8 mirrored and / or turned
# EXIF orientation -> (transpose, mirror left-right, mirror top-bottom), applied in that order to stored pixels to
# show them upright (EXIF 2.3 tag 0x0112; the same turns as PIL's exif_transpose, which the tests check)
ORIENTATION_STEPS = {
    1: (False, False, False),
    2: (False, True, False),
    3: (False, True, True),
    4: (False, False, True),
    5: (True, False, False),
    6: (True, True, False),
    7: (True, True, True),
    8: (True, False, True),
}
PROBE_BAR_DELAY_S = 1.0  # seconds a video's probe runs before its progress bar appears
# Qwen2.5-VL's processor (transformers' smart_resize) refuses frames whose long side is over 200 times the short one
MAX_ASPECT = 200
_MATROSKA_DURATION = re.compile(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)")  # a track's DURATION tag, e.g. 00:00:03.000000000


@dataclass
class MediaInfo:
    """What a media path holds: kind (image | video | frames), frame count, frame size and frame rate if known."""

    path: str
    kind: str
    num_frames: int
    height: int
    width: int
    fps: float | None = None
    declared_frames: int | None = None  # a video container's own frame count (None: it gives none)
    orientation: int = 1  # a video's display matrix in EXIF numbering, applied to every frame (1: none)
    declared_seconds: float | None = None  # the video's end as a webm / mkv declares it (None: not declared)
    decoded_seconds: float | None = None  # where the last decoded frame of a video ends
    decode_error: str | None = None  # the error that stopped a video's decoding after some frames (None: none)
    notes: list[str] = field(default_factory=list)  # lines the user should see: files skipped, pages not read


@dataclass
class Media:
    """Decoded frames of one media path: frames (T, 3, H, W) uint8 at the original indices `frame_ids`."""

    frames: torch.Tensor
    frame_ids: list[int]
    names: list[str]  # one file stem per frame (the DAVIS layout's PNG names)
    info: MediaInfo
    meta: dict = field(default_factory=dict)  # exif_orientation: {frame name: EXIF orientation applied}

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


def aspect_problem(height: int, width: int) -> str | None:
    """What is wrong with frames of this size for the model (their aspect ratio is past MAX_ASPECT:1, which the
    Qwen2.5-VL processor refuses), or None."""
    if min(height, width) > 0 and max(height, width) / min(height, width) > MAX_ASPECT:
        return (
            f"is {width}x{height}; expected an aspect ratio of at most {MAX_ASPECT}:1 (the Qwen2.5-VL processor's "
            "limit): crop or pad it"
        )
    return None


def check_aspect(info: MediaInfo) -> MediaInfo:
    """`info` when its frames' aspect ratio suits the model, else the one-line `--media` error (`aspect_problem`)."""
    problem = aspect_problem(info.height, info.width)
    if problem is not None:
        raise _bad(info.path, problem)
    return info


def _folder_frames(folder: Path, media: str | Path) -> tuple[list[Path], list[str]]:
    """(the frame files of a frames folder in time order, names of the other visible files skipped); two frames of
    one name are refused (outputs are named by it)."""
    from pixelqa.data.sources._frame_order import frame_order, is_hidden

    frames: list[Path] = []
    skipped: list[str] = []
    for p in folder.iterdir():
        if is_hidden(p) or not p.is_file():  # dotfiles (`._*`, `.DS_Store`), folders, broken links
            continue
        if p.suffix.lower() in FRAME_SUFFIXES:
            frames.append(p)
        else:
            skipped.append(p.name)
    frames = frame_order(frames)
    seen: dict[str, Path] = {}
    for f in frames:
        if f.stem in seen:
            raise _bad(
                media,
                f"holds frames {seen[f.stem].name} and {f.name} of the same name {f.stem!r}; expected one file per "
                "frame name (outputs are named by it)",
            )
        seen[f.stem] = f
    return frames, sorted(skipped)


def frame_files(folder: Path) -> list[Path]:
    """The frame files of a frames folder in time order: by the number in their names (`frame_2` before
    `frame_10`), hidden files skipped (see the module docstring)."""
    return _folder_frames(Path(folder), folder)[0]


def _open_image(path: Path, media: str | Path) -> tuple[np.ndarray, int, int]:
    """((H, W, 3) uint8 RGB upright by its EXIF orientation, that orientation (1: none), the number of pages or
    frames the file holds (only the first is read)), or a PredictInputError."""
    from pixelqa.data.sources._image_files import eight_bit

    where = "" if Path(media) == path else f" (frame {path.name})"
    try:
        with Image.open(path) as im:
            pages = int(getattr(im, "n_frames", 1) or 1)
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            # only 2..8 turn or mirror (exif_transpose ignores anything else, so it is not reported as applied)
            orientation = orientation if isinstance(orientation, int) and 2 <= orientation <= 8 else 1
            # users click on the picture as viewers show it: a phone's JPEG stored sideways is turned upright
            upright = ImageOps.exif_transpose(im)
            # 16-bit / 32-bit / float pictures scaled to 8 bits as the converters do (convert alone clips at 255)
            return np.asarray(eight_bit(upright).convert("RGB")), orientation, pages
    except Image.DecompressionBombError as exc:
        raise _bad(media, f"is too large to decode safely{where}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _bad(media, f"cannot be decoded as an image{where}: {exc}") from None


def image_header_size(path: Path, media: str | Path) -> tuple[int, int]:
    """(H, W) of an image as shown (EXIF orientation applied), read from its header: no pixel is decoded, so a
    size cap can be applied before a huge image takes memory."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            # PIL's PNG reader decodes the whole image to look for an EXIF chunk after the pixels: not here
            exif = im.getexif() if im.format != "PNG" or "exif" in im.info else {}
            orientation = exif.get(ORIENTATION_TAG, 1)
    except Image.DecompressionBombError as exc:
        raise _bad(media, f"is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _bad(media, f"cannot be decoded as an image: {exc}") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # these four turn the picture by 90 degrees


def _image_size(path: Path, media: str | Path) -> tuple[int, int, int]:
    """(H, W) of an image file as shown, and its number of pages / frames (fully decoded, so that a truncated file
    is found here)."""
    rgb, _, pages = _open_image(path, media)
    return int(rgb.shape[0]), int(rgb.shape[1]), pages


def _pillow_frames(path: Path) -> int | None:
    """How many pictures Pillow finds in a file (None: Pillow does not read it as an image), from its header."""
    try:
        with Image.open(path) as im:
            return max(1, int(getattr(im, "n_frames", 1) or 1))
    except Image.DecompressionBombError:
        return 1  # an image, too large: its probe says so
    except (UnidentifiedImageError, OSError, ValueError, EOFError):
        return None


def display_orientation(matrix: Sequence[int]) -> int:
    """The EXIF orientation (1..8) of a display matrix (FFmpeg's DISPLAYMATRIX: nine int32), to a quarter turn."""
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    # libavutil/display.h: a stored pixel at column p, row q is shown at column a*p + c*q, row b*p + d*q (plus a
    # shift); FFmpeg's autorotation turns frames by the same quarter turns and mirrors
    if abs(b) + abs(c) > abs(a) + abs(d):
        steps = (True, c < 0, b < 0)  # columns become rows
    else:
        steps = (False, a < 0, d < 0)
    return next(o for o, s in ORIENTATION_STEPS.items() if s == steps)


def orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Stored (H, W, 3) pixels turned / mirrored upright by an EXIF orientation (1 or unknown: unchanged)."""
    transpose, mirror_lr, mirror_tb = ORIENTATION_STEPS.get(orientation, ORIENTATION_STEPS[1])
    if transpose:
        rgb = rgb.transpose(1, 0, 2)
    if mirror_lr:
        rgb = rgb[:, ::-1]
    if mirror_tb:
        rgb = rgb[::-1]
    return np.ascontiguousarray(rgb)


def _frame_orientation(frame) -> int:
    """The EXIF orientation of a decoded video frame's display matrix (1: it carries none or it cannot be read)."""
    try:
        side = frame.side_data.get("DISPLAYMATRIX")
    except (ValueError, KeyError, TypeError):
        # PyAV names every side data of the frame, and one of a type it does not know fails (FFmpeg 8 attaches
        # EXIF, type 31, to JPEG-coded frames that carry it: MJPEG AVIs from cameras): read the matrix's turn alone
        return _rotation_orientation(frame)
    if side is None:
        return 1
    data = bytes(side)
    return display_orientation(struct.unpack("=9i", data[:36])) if len(data) >= 36 else 1


def _rotation_orientation(frame) -> int:
    """The EXIF orientation of a frame's display rotation (PyAV's `rotation`, degrees counter-clockwise, to a
    quarter turn; mirroring is not seen); 1 when it cannot be read."""
    try:
        degrees = float(frame.rotation)
    except (AttributeError, ValueError, TypeError):
        return 1
    # a viewer turns the stored picture counter-clockwise by `degrees`: 90 is EXIF 8, 180 is 3, 270 (-90) is 6
    return {0: 1, 1: 8, 2: 3, 3: 6}[round(degrees / 90) % 4]


def _declared_seconds(container, stream) -> float | None:
    """The end a webm / mkv declares for its video stream (the track's DURATION tag, else the file's duration
    when the video is its only stream); None for other containers, whose durations FFmpeg may only estimate."""
    tag = _MATROSKA_DURATION.fullmatch(stream.metadata.get("DURATION", "").strip())
    if tag:
        return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    # other streams (audio) may run past the video: the file's duration is the video's only when it is alone
    if "matroska" in container.format.name and len(container.streams) == 1 and container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _video_frames(path: Path, keep: set[int] | None):
    """Yield (index, (H, W, 3) uint8 upright) of the decoded frames of a video whose index is in `keep` (None: all)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _bad(path, "holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            last = max(keep) if keep else None
            for i, frame in _decoded(container, stream):
                if keep is None or i in keep:
                    yield i, orient(frame.to_ndarray(format="rgb24"), _frame_orientation(frame))
                if last is not None and i >= last:
                    return  # the frames after the last one asked for are not decoded
    except PredictInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be decoded as a video or image: {exc}") from None


def _decoded(container, stream, stopped: list[str] | None = None):
    """Yield (index, frame) of a video stream up to its first decoding error after at least one frame (a damaged
    middle: the frames before it are sound, as with a cut file); `stopped` receives that error's text. An error
    before any frame is raised."""
    import av

    i = -1
    try:
        for i, frame in enumerate(container.decode(stream)):
            yield i, frame
    except av.FFmpegError as exc:
        if i < 0:
            raise
        if stopped is not None:
            stopped.append(str(exc))


def probe_media(path: str | Path, progress: bool = False) -> MediaInfo:
    """Kind, frame count and size of an image, video or frames folder (a video is decoded once to count, under a
    `probing video` bar with `progress`); frames the model cannot take (an aspect ratio past MAX_ASPECT:1) are
    refused here, before any model is loaded."""
    if str(path) == "":  # Path("") is the current folder, which would be read as a frames folder
        raise PredictInputError("--media: got an empty path, expected an image, a video file or a folder of frames")
    return check_aspect(_probe(path, progress))


def _probe(path: str | Path, progress: bool = False) -> MediaInfo:
    """`probe_media` without the check of the frames' aspect ratio."""
    p = Path(path)
    if not p.exists():
        raise _bad(path, "does not exist; expected an image, a video file or a folder of frames")
    if p.is_dir():
        files, skipped = _folder_frames(p, path)
        if not files:
            raise _bad(path, f"is a folder without frame images ({', '.join(FRAME_SUFFIXES)})")
        h, w, _ = _image_size(files[0], path)
        notes = []
        if skipped:
            shown = ", ".join(skipped[:5]) + (f", ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
            notes.append(
                f"--media: {str(path)!r} skipped {len(skipped)} file(s) that are not frame images "
                f"({', '.join(FRAME_SUFFIXES)}): {shown}"
            )
        return MediaInfo(str(p), "frames", len(files), h, w, notes=notes)
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _probe_image(p, path)
    if suffix in VIDEO_SUFFIXES:
        return _probe_video(p, path, progress)
    # no suffix, or one that names no format: Pillow sniffs the content; one picture is an image, several a video
    # (an animated GIF), and what Pillow does not read goes to PyAV
    pictures = _pillow_frames(p)
    if pictures is None:
        return _probe_video(p, path, progress)
    video = functools.partial(_probe_video, progress=progress)
    first, second = (_probe_image, video) if pictures == 1 else (video, _probe_image)
    try:
        return first(p, path)
    except PredictInputError as exc:
        try:
            return second(p, path)
        except PredictInputError:
            raise exc from None


def _probe_image(p: Path, path: str | Path) -> MediaInfo:
    """The MediaInfo of an image file (a file of several pages or frames: its first, with a note)."""
    h, w, pages = _image_size(p, path)
    notes = []
    if pages > 1:
        notes.append(
            f"--media: {str(path)!r} holds {pages} pages / frames; only the first is read (give a video file or a "
            "folder of frames to use them all)"
        )
    return MediaInfo(str(p), "image", 1, h, w, notes=notes)


def _expected_frames(container, stream, declared: int | None, fps: float | None) -> int | None:
    """The frame count a video's container gives or suggests (its count, else its duration x frame rate), for a
    progress bar only: the probe counts by decoding."""
    if declared:
        return declared
    if fps and container.duration:
        return max(1, round(container.duration / 1_000_000 * fps))  # AV_TIME_BASE
    return None


def _probe_video(p: Path, path: str | Path, progress: bool = False) -> MediaInfo:
    """The MediaInfo of a video file, decoded once by PyAV to count its frames (a container's count can be wrong
    or absent: a cut download, webm / mkv); `progress`: a bar over the count the container suggests."""
    import av

    count, size, fps, declared, orientation = 0, None, None, None, 1
    declared_s, decoded_s, last, stopped = None, None, None, []
    bar = None
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise _bad(path, "holds no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            declared = int(stream.frames) or None  # 0: the container does not say (webm, mkv, ...)
            declared_s = None if declared else _declared_seconds(container, stream)
            expected = _expected_frames(container, stream, declared, fps)
            # a long video takes a while to count: a bar, so that the wait does not look like a hang (shown only
            # once the count takes PROBE_BAR_DELAY_S: a short clip's probe stays silent)
            bar = progress_bar(
                progress, total=expected, desc="probing video", unit="frame", leave=False, delay=PROBE_BAR_DELAY_S
            )
            for _, frame in _decoded(container, stream, stopped):  # counted by decoding: counts can be absent
                if size is None:
                    orientation = _frame_orientation(frame)
                    quarter_turn = ORIENTATION_STEPS[orientation][0]  # stored columns are shown as rows
                    size = (frame.width, frame.height) if quarter_turn else (frame.height, frame.width)
                count += 1
                bar.update(1)
                last = (frame.pts, frame.duration, frame.time_base)
            if last is not None and last[0] is not None and last[2]:
                pts, duration, time_base = last
                span = duration * time_base if duration else (1 / fps if fps else 0)
                decoded_s = float(pts * time_base + span)
    except PredictInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be decoded as a video or image: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
    if size is None:
        raise _bad(path, "holds no decodable video frame")
    h, w = int(size[0]), int(size[1])
    error = stopped[0] if stopped else None
    return MediaInfo(str(p), "video", count, h, w, fps, declared, orientation, declared_s, decoded_s, error)


def media_warnings(info: MediaInfo) -> list[str]:
    """One line per thing the user should know about the media: files of a frames folder skipped, pages of an image
    file not read (`MediaInfo.notes`), and signs of damage (a video decoding to fewer frames or seconds than it
    declares, or stopped by a decoding error)."""
    return [*info.notes, *_damage(info)]


def _damage(info: MediaInfo) -> list[str]:
    """The line of `media_warnings` on damage, if any."""
    if info.decode_error is not None:
        return [
            f"--media: {info.path!r} stops decoding after frame {info.num_frames - 1} ({info.decode_error}; "
            f"damaged?); using the {info.num_frames} frames before it"
        ]
    if info.declared_frames is not None and info.num_frames < info.declared_frames:
        return [
            f"--media: {info.path!r} declares {info.declared_frames} frames but only {info.num_frames} decode "
            f"(truncated or damaged?); using those {info.num_frames}"
        ]
    if info.declared_seconds is not None and info.decoded_seconds is not None:
        # two frame periods of slack: container timestamps are rounded (mkv: to the millisecond) and a last
        # frame's duration may be unknown; a cut download loses far more
        slack = 2 / info.fps if info.fps else 0.2
        if info.decoded_seconds < info.declared_seconds - slack:
            return [
                f"--media: {info.path!r} declares {info.declared_seconds:.2f} s of video but its frames end at "
                f"{info.decoded_seconds:.2f} s (truncated or damaged?); using the {info.num_frames} that decode"
            ]
    return []


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
    # each frame goes straight into its place: a list of frames stacked at the end held the clip three times over
    frames = torch.empty((len(wanted), 3, info.height, info.width), dtype=torch.uint8)
    slots = frames.numpy()  # written through numpy: decoders may hand out read-only arrays
    names: list[str] = []
    turned: dict[str, int] = {}

    def put(j: int, name: str, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != (info.height, info.width):
            got, want = f"{rgb.shape[1]}x{rgb.shape[0]}", f"{info.width}x{info.height}"
            raise _bad(path, f"frame {name} is {got}, expected {want} like the first frame")
        slots[j] = rgb.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)

    if info.kind in ("image", "frames"):
        listed = [p] if info.kind == "image" else _folder_frames(p, path)[0]
        if len(listed) != info.num_frames:
            raise _bad(path, f"holds {len(listed)} frames now but {info.num_frames} when probed (changed while read?)")
        for j, f in enumerate([listed[i] for i in wanted]):
            rgb, orientation, _ = _open_image(f, path)
            name = f"{0:05d}" if info.kind == "image" else f.stem
            put(j, name, rgb)
            names.append(name)
            if orientation != 1:
                turned[name] = orientation
    else:
        bar = progress_bar(progress, total=len(wanted), desc="decoding frames", unit="frame")
        place = {i: j for j, i in enumerate(wanted)}
        got: set[int] = set()
        for i, rgb in _video_frames(p, keep=set(wanted)):
            put(place[i], f"{i:05d}", rgb)
            got.add(i)
            bar.update(1)
        bar.close()
        missing = [i for i in wanted if i not in got]
        if missing:
            raise _bad(path, f"ended before frame {missing[0]} (decoded {len(got)} of the {len(wanted)} wanted)")
        names = [f"{i:05d}" for i in wanted]
    return Media(frames, wanted, names, info, meta={"exif_orientation": turned})


def media_from_tensor(frames: torch.Tensor, kind: str | None = None) -> Media:
    """A Media around (T, 3, H, W) uint8 frames given in memory (kind: image when T == 1 unless told; an image is
    one frame)."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        if isinstance(frames, torch.Tensor):
            got = f"a {tuple(frames.shape)} {str(frames.dtype).removeprefix('torch.')} tensor"
        else:
            got = type(frames).__name__
        raise PredictInputError(f"media: got {got}, expected a (T, 3, H, W) uint8 tensor or a path")
    t, _, h, w = frames.shape
    if t == 0:
        raise PredictInputError(f"media: got 0 frames (a {tuple(frames.shape)} tensor), expected >= 1")
    if h == 0 or w == 0:
        raise PredictInputError(f"media: got frames of {w}x{h} (a {tuple(frames.shape)} tensor), expected H, W >= 1")
    problem = aspect_problem(h, w)
    if problem is not None:
        raise PredictInputError(f"media: frames of a {tuple(frames.shape)} tensor: {problem}")
    kind = kind or ("image" if t == 1 else "video")
    if kind not in ("image", "video"):
        raise PredictInputError(f"kind: got {kind!r}, expected 'image' or 'video'")
    if kind == "image" and t > 1:
        raise PredictInputError(f"kind: got 'image' for {t} frames, expected 'video' (or one frame)")
    info = MediaInfo("<tensor>", kind, int(t), int(h), int(w))
    return Media(frames, list(range(t)), [f"{i:05d}" for i in range(t)], info)
