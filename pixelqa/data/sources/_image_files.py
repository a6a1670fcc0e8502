"""File access shared by the image-source converters: images, cached annotation files, COCO segmentations.

A JPEG or PNG on disk is carried over byte for byte (no re-encoding) unless it carries an EXIF rotation,
which OpenCV (the schema's decoder) would apply while the annotations are in stored-pixel order; such
files, and other formats (GIF, BMP, WebP, ...), are decoded without rotation and re-encoded as JPEG.
Images of more than 8 bits per sample are shown at 8 bits the way OpenCV decodes a 16-bit PNG (the high byte):
`eight_bit` is that rule for the images PIL decodes, here and in `pixelqa.predict` (one picture, one look).
This module registers no source (its name starts with '_').
"""

from __future__ import annotations

import functools
import io
import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelqa.data import masks
from pixelqa.data.schema import Media, encode_frame
from pixelqa.data.sources._safe_pickle import load_plain_pickle

log = logging.getLogger(__name__)

LEGACY_ENCODING = "cp1252"  # the fallback for text that is not UTF-8
_EXIF_ORIENTATION = 0x0112
_PASSTHROUGH = {"JPEG": "jpg", "PNG": "png"}


@dataclass
class ImageFile:
    """One encoded image ready for `Media`: bytes, schema extension and (H, W)."""

    data: bytes
    ext: str
    size: tuple[int, int]

    def media(self, frame_id: Any = None) -> Media:
        """A one-frame image `Media` of this file."""
        return Media(
            kind="image",
            frames=[self.data],
            size=self.size,
            ext=self.ext,
            frame_ids=None if frame_id is None else [frame_id],
        )


def eight_bit(im: Image.Image) -> Image.Image:
    """`im` with more than 8 bits per sample (PIL modes I;16*, I, F) as an 8-bit greyscale ('L') image, scaled as
    a viewer shows it; any other image unchanged. 16-bit samples keep their high byte (`v >> 8`, what OpenCV gives
    for a 16-bit PNG or TIFF); 32-bit integers within 0..65535 likewise, others min-max; floats within 0..1 times
    255, others min-max. PIL's own `convert` would clip all of these at 255 (a white picture)."""
    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return im
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray((a.astype(np.uint16) >> 8).astype(np.uint8), "L")
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        out = a / 256  # as a 16-bit image (PIL reads some 16-bit files as 'I')
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        out = a * 255 + 0.5
    else:  # min-max: the whole range visible (a constant image is black)
        out = (a - lo) * (255 / (hi - lo)) + 0.5 if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


def _png_chunks(data: bytes) -> set[bytes]:
    """The chunk types of a PNG file's bytes, read by walking the chunk lengths (no pixel is decoded)."""
    found, pos = set(), 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        found.add(bytes(data[pos + 4 : pos + 8]))
        pos += 12 + length
    return found


def stored_orientation(im: Image.Image, data: bytes) -> int:
    """The EXIF orientation (2..8; 1: none or invalid) of an opened image whose file bytes are `data`: the turn
    OpenCV applies when it decodes them. A PNG's eXIf chunk may follow the pixels, so the chunk list is walked
    rather than decoding the image to find it."""
    if im.format == "PNG" and "exif" not in im.info and b"eXIf" not in _png_chunks(data):
        return 1
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    return orientation if isinstance(orientation, int) and 2 <= orientation <= 8 else 1


def read_image(path: Path | str) -> ImageFile:
    """Read an image file as schema-ready bytes; see the module docstring for when it is re-encoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            w, h = im.size
            if fmt in _PASSTHROUGH and stored_orientation(im, data) == 1:
                return ImageFile(data=data, ext=_PASSTHROUGH[fmt], size=(int(h), int(w)))
            # PIL does not apply EXIF rotation: stored pixel order; 16-bit / float images scaled, not clipped
            rgb = np.asarray(eight_bit(im).convert("RGB"))
    except OSError as e:
        raise ValueError(f"image file {path}: cannot be decoded ({e}), expected a JPEG/PNG/other PIL image") from e
    return ImageFile(data=encode_frame(np.ascontiguousarray(rgb), "jpg"), ext="jpg", size=(int(h), int(w)))


def check_size(found: tuple[int, int], height: Any, width: Any, where: str) -> None:
    """Raise when an annotation's declared height/width disagree with the image's real (H, W)."""
    if height is None or width is None:
        return
    if (int(height), int(width)) != tuple(found):
        raise ValueError(f"{where}: got height/width ({height}, {width}), expected the image size {tuple(found)}")


def first_existing(candidates: Sequence[Path], what: str) -> Path:
    """The first candidate path that exists; FileNotFoundError naming every candidate otherwise."""
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{what} not found; looked for: {tried}")


def read_text(path: Path | str) -> str:
    """A text file as UTF-8 (a BOM allowed), else cp1252: some releases (LISA's ReasonSeg JSONs) are Windows text,
    and LISA's own loader falls back to cp1252 the same way. ValueError names the file when neither decodes."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotation file not found: {p}")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as first:
        try:
            text = raw.decode(LEGACY_ENCODING)
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not UTF-8 ({first}) nor {LEGACY_ENCODING} text ({e})") from e
    log.info("%s: not UTF-8, read as %s", p, LEGACY_ENCODING)
    return text


def read_json(path: Path | str) -> Any:
    """Parse a JSON file (UTF-8, or cp1252 as `read_text`); FileNotFoundError / ValueError name the file."""
    p = Path(path)
    text = read_text(p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e


def file_version(path: str | Path) -> tuple[str, int, int]:
    """(absolute path, mtime, size): a cache key that a rewritten or relative-path file cannot alias."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"annotation file not found: {p}")
    st = p.stat()
    return str(p), st.st_mtime_ns, st.st_size


def cached_json(path: str | Path) -> Any:
    """A big JSON file parsed once per process (workers convert many items of the same annotation file)."""
    return _cached_json(*file_version(path))


@functools.lru_cache(maxsize=4)
def _cached_json(path: str, mtime_ns: int, size: int) -> Any:
    return read_json(path)


def cached_json_list(path: str | Path) -> list:
    """`cached_json` of a file that must hold a list of records (LLaVA, Osprey): TypeError naming it otherwise."""
    data = cached_json(path)
    if not isinstance(data, list):
        raise TypeError(f"{path}: got {type(data).__name__}, expected a list of records")
    return data


def cached_pickle(path: str | Path) -> Any:
    """A dataset pickle parsed once per process, admitting plain data only (see `_safe_pickle`)."""
    return _cached_pickle(*file_version(path))


@functools.lru_cache(maxsize=4)
def _cached_pickle(path: str, mtime_ns: int, size: int) -> Any:
    return load_plain_pickle(path)


def require(record: Any, key: str, where: str) -> Any:
    """record[key]; TypeError if record is not a dict, ValueError naming the record if the field is missing."""
    if not isinstance(record, dict):
        raise TypeError(f"{where}: got {type(record).__name__}, expected a JSON object with field {key!r}")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r} (has {sorted(record)[:12]})")
    return record[key]


def check_polygons_inside(polygons: Any, height: int, width: int, where: str) -> None:
    """ValueError when COCO polygons lie wholly outside the (height, width) image (a partial overlap is clipped)."""
    xs = [float(v) for p in polygons if isinstance(p, (list, tuple)) for v in p[0::2]]
    ys = [float(v) for p in polygons if isinstance(p, (list, tuple)) for v in p[1::2]]
    if not xs or not ys:
        raise ValueError(f"{where}: got polygons {polygons!r:.60} without points, expected [x1, y1, x2, y2, ...]")
    if max(xs) < 0 or min(xs) > width or max(ys) < 0 or min(ys) > height:
        raise ValueError(
            f"{where}: region outside the image (points span x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}), "
            f"expected points within the image of width {width} and height {height}"
        )


def segmentation_rle(seg: Any, height: int, width: int, where: str) -> dict:
    """A COCO `segmentation` (polygons, one RLE, or a list of RLEs) -> one canonical RLE of (height, width)."""
    if isinstance(seg, dict):
        rles = [seg]
    elif isinstance(seg, list) and seg and all(isinstance(s, dict) for s in seg):
        rles = list(seg)  # refclef stores a list of RLE parts
    elif isinstance(seg, list) and all(isinstance(p, (list, tuple)) for p in seg):
        for p in seg:
            if len(p) % 2 or not all(isinstance(v, (int, float)) for v in p):
                raise ValueError(f"{where}: got polygon {p!r:.60}, expected a flat list [x1, y1, x2, y2, ...]")
        check_polygons_inside(seg, height, width, where)
        return masks.from_polygons(seg, height, width)
    else:
        raise ValueError(f"{where}: got {seg!r:.80}, expected COCO polygons, an RLE dict or a list of RLE dicts")
    out = []
    for rle in rles:
        if "size" not in rle or "counts" not in rle:
            raise ValueError(f"{where}: got RLE {rle!r:.80}, expected keys 'size' and 'counts'")
        if [int(s) for s in rle["size"]] != [height, width]:
            raise ValueError(f"{where}.size: got {list(rle['size'])}, expected the image size [{height}, {width}]")
        out.append(masks.normalize(rle))
    return out[0] if len(out) == 1 else masks.merge(out)
