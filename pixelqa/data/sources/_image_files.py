"""File access shared by the image-source converters: images, cached annotation files, COCO segmentations.

A JPEG or PNG on disk is carried over byte for byte (no re-encoding) unless it carries an EXIF rotation,
which OpenCV (the schema's decoder) would apply while the annotations are in stored-pixel order; such
files, and other formats (GIF, BMP, WebP, ...), are decoded without rotation and re-encoded as JPEG.
This module registers no source (its name starts with '_').
"""

from __future__ import annotations

import functools
import io
import json
import logging
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
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            if fmt in _PASSTHROUGH and orientation in (None, 1):
                return ImageFile(data=data, ext=_PASSTHROUGH[fmt], size=(int(h), int(w)))
            rgb = np.asarray(im.convert("RGB"))  # PIL does not apply EXIF rotation: stored pixel order
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
