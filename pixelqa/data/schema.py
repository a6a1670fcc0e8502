"""The sample schema: one training or evaluation example, the same for every source.

API summary (stable; converters build these objects and yield `Sample`s):

    SCHEMA_VERSION: int                 bumped when the JSON layout changes
    TASKS: frozenset[str]               res rec rvos reasonseg reason_vos region_caption region_qa memory_qa
                                        video_qa image_qa mcq pixelqa caption semseg
    PROMPT_TYPES = ("point", "box", "mask");  MEDIA_KINDS = ("image", "video");  ROLES = ("user", "assistant")

    Media(kind, frames: list[bytes], size: (H, W), ext="jpg", fps=None, frame_ids=None)
        frames are ENCODED images (JPEG or PNG bytes, all with extension `ext`), in temporal order; an image
        is kind="image" with exactly one frame. Frame indices everywhere below are 0-based positions in
        `frames`. `frame_ids` optionally keeps the source's own frame numbers/names (len == len(frames)).
    ObjectTrack(masks: dict[int, Rle], category=None, caption=None)
        per-frame COCO RLE masks (`pixelqa.data.masks.encode`), keyed by frame index; absent frames allowed
        (= not annotated). An annotated but empty mask means "annotated, object not visible".
    Prompt(type, frame, object_id=None, coords=None, rle=None)
        a visual prompt in SOURCE PIXELS: point coords [x, y]; box coords [x1, y1, x2, y2] (x2 >= x1);
        mask `rle`. Prompts are listed in the order of the <|ref|> tokens across the user turns.
    Turn(role, text, seg_objects=[], memory_objects=[])
        role "user" | "assistant". User text holds one <|ref|> per prompt (in order over all user turns).
        Assistant text may hold <|seg|>: `seg_objects[i]` is the object id whose masks the i-th <|seg|> of
        that turn must produce (so len(seg_objects) == text.count("<|seg|>")); collate builds `seg_masks`
        from these in <|seg|> order over the whole conversation. Stored text never holds <|mem|>: a user turn
        lists `memory_objects` (object ids) and collate renders the memory preamble
        (`prompt_format.memory_prompt`) in front of that turn AFTER frame sampling, so frame tags stay right.
    Sample(key, source, split, task, media, objects: dict[int, ObjectTrack], prompts, turns,
           answer=None, choices=None, meta={})
        .validate(check_frames=False) -> Sample    raises SampleError (a ValueError) naming field, value,
                                                   expectation; check_frames=True also decodes every frame
        .to_record() -> dict                       webdataset record {"__key__", "json", "000.jpg", ...}
        Sample.from_record(record) -> Sample       inverse (record values bytes; "json" bytes/str/dict)
        .seg_object_ids() -> list[int]             object id of every <|seg|> of the conversation, in order
        .to_json() -> dict / Sample.from_json(d, frames)   the JSON part alone; from_json (and so from_record)
                                                   checks what could harm a reader: the key (it names files) and
                                                   each frame's header size against media.size (SampleError)
        .decode_frames(indices=None) -> np.ndarray (T, H, W, 3) uint8 RGB; each frame's header must give
                                                   media.size before anything is decoded (FrameDecodeError)
    make_key(*parts) -> str     a shard-safe key ([A-Za-z0-9_-], no dots) from arbitrary parts; a part that had to be
                                cleaned carries a short hash of its original text, so distinct names give distinct keys
    is_key(value) -> bool       whether `value` is such a key (safe as a file name: no dots, no slashes)
    frame_size(data) -> (H, W)  an encoded frame's size from its header alone (JPEG, PNG, PPM; FrameDecodeError)
    encode_frame(rgb, ext="jpg", quality=95) -> bytes;  decode_frame(data) -> (H, W, 3) uint8 RGB
    parse_json(raw) -> Any      a record's JSON member; damaged or too deeply nested JSON raises ValueError
    SampleError(ValueError): schema violations;  FrameDecodeError(ValueError): undecodable frame bytes

Object ids are integers >= 0 (they become the ``[k]`` tags of the memory bank; the released data numbers
VideoRefer objects from 0).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pixelqa.prompt_format import MEM, REF, SEG, count_ref, count_seg

SCHEMA_VERSION = 1
# How `make_key` spells a sample's key (not part of the JSON layout, so apart from SCHEMA_VERSION). 2: a name part
# with characters outside [A-Za-z0-9_-] carries a hash of its original text (1 cleaned them only, so distinct names
# could meet). A build records it; resuming a build begun under another format is refused (mixed key forms).
KEY_FORMAT = 2

# One constant for every task name a source may use; extend here (and nowhere else).
TASKS: frozenset[str] = frozenset(
    {
        "res",  # referring expression segmentation (image)
        "rec",  # referring expression comprehension (box from mask)
        "rvos",  # referring video object segmentation
        "reasonseg",  # reasoning segmentation (image)
        "reason_vos",  # reasoning video object segmentation (ReVOS, GroundMoRe)
        "region_caption",  # describe the prompted region(s)
        "region_qa",  # free-form QA about prompted regions
        "memory_qa",  # pre-fill (segment the prompted objects) then answer with memory injection
        "video_qa",
        "image_qa",
        "mcq",  # multiple choice, `choices` set
        "pixelqa",  # MCQ + segmentation of the prompted objects (the paper's PixelQA)
        "caption",
        "semseg",  # class-name segmentation from semantic / part datasets (ADE20K, COCO-Stuff, PACO, ...)
    }
)
PROMPT_TYPES: tuple[str, ...] = ("point", "box", "mask")
MEDIA_KINDS: tuple[str, ...] = ("image", "video")
ROLES: tuple[str, ...] = ("user", "assistant")
# ppm: binary Netpbm (P6), the decoded pixels after a short header; shards built with --frame-codec ppm trade disk
# (10x the JPEG bytes of the synthetic frames at 112 px, more at larger sizes) for a decode that is one copy
# (pixelqa.data.shards; docs/benchmarks.md, Data)
FRAME_EXTS: tuple[str, ...] = ("jpg", "png", "ppm")
FRAME_CODECS: tuple[str, ...] = ("keep", *FRAME_EXTS)  # a shard build's frames: as released, or re-encoded
_PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]+")
KEY_HASH_CHARS = 8  # hex digits of SHA-256 that `make_key` appends to a part it had to clean
# Free-form values a record carries into its batch untouched (meta, choices, answer: a batch's meta, which DataLoader
# workers pickle) may nest this deep: far more than any converter writes, far less than where pickle (about 500
# levels) or the standard json module (about 1000) would recurse past Python's limit
MAX_NESTING = 64
# Pixels a frame may have (PIL's decompression-bomb limit, `Image.MAX_IMAGE_PIXELS`): a few KB of PNG can honestly
# declare and hold 10,000 x 10,000 pixels, 300 MB decoded; no dataset this project reads has frames near it (4K video
# is 8.3 M pixels)
MAX_FRAME_PIXELS = 89_478_485


class SampleError(ValueError):
    """A sample that breaks the schema; the message names the field, the value and the expectation."""


class FrameDecodeError(ValueError):
    """Encoded frame bytes that OpenCV cannot decode."""


def _fail(field_name: str, value: Any, expected: str) -> None:
    """Raise a SampleError with the house format."""
    try:
        shown = repr(value)
    except RecursionError:  # a value nested past Python's recursion limit (read from a crafted record)
        shown = f"a {type(value).__name__} nested too deeply to show"
    if len(shown) > 120:
        shown = shown[:117] + "..."
    raise SampleError(f"{field_name}: got {shown}, expected {expected}")


def _too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether dicts / lists in `value` nest more than `limit` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for child in v.values() if isinstance(v, dict) else v:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def is_key(value: Any) -> bool:
    """Whether `value` is a shard-safe key: [A-Za-z0-9_-], starting with a letter or digit (a safe file name)."""
    return isinstance(value, str) and _KEY.fullmatch(value) is not None


def _key_part(part: Any) -> str:
    """One part of a key: kept as it was when made of [A-Za-z0-9_-] only; else cleaned and tagged with a hash."""
    text = str(part)
    cleaned = _KEY_BAD.sub("_", text).strip("_")
    if _KEY_BAD.search(text) is None:
        # Already safe: the key such a name has always had in built shards (outer "_" stripped, as before).
        return cleaned
    # Cleaning lost characters ('vid.a' and 'vid_a', or every non-ASCII name, would meet): the hash of the original
    # text keeps distinct names distinct, the same on every run and machine.
    tag = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_HASH_CHARS]
    return f"{cleaned}_{tag}" if cleaned else tag


def make_key(*parts: Any) -> str:
    """A shard-safe key from arbitrary parts joined by '-': a part of [A-Za-z0-9_-] stays as it is, any other has its
    other characters turned into '_' and a hash of its original text appended (distinct names, distinct keys)."""
    key = "-".join(p for p in map(_key_part, parts) if p)
    if not is_key(key):
        raise ValueError(f"parts: got {parts!r}, expected at least one non-empty part")
    return key


def encode_frame(rgb: np.ndarray, ext: str = "jpg", quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as JPEG or PNG bytes."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: got shape {rgb.shape} dtype {rgb.dtype}, expected (H, W, 3) uint8")
    if ext not in FRAME_EXTS:
        raise ValueError(f"ext: got {ext!r}, expected one of {FRAME_EXTS}")
    if ext == "ppm":  # RGB rows as they are, after the Netpbm header
        return b"P6\n%d %d\n255\n" % (rgb.shape[1], rgb.shape[0]) + np.ascontiguousarray(rgb).tobytes()
    import cv2  # here, not at import: OpenCV's loader rewrites LD_LIBRARY_PATH for every later subprocess

    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"rgb: OpenCV could not encode an array of shape {rgb.shape} as {ext}")
    return buf.tobytes()


def decode_frame(data: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
    """Decode JPEG/PNG/PPM bytes to an (H, W, 3) uint8 RGB array (written into `out` when given, and returned)."""
    arr = _pixels(data)
    if out is None:
        return arr if arr.flags.writeable else arr.copy()  # a PPM view is read-only (it shares the record's bytes)
    if out.shape != arr.shape or out.dtype != np.uint8:
        raise FrameDecodeError(f"data: decoded to shape {arr.shape}, expected {out.shape} like the other frames")
    out[...] = arr
    return out


def _pixels(data: bytes | memoryview) -> np.ndarray:
    """The (H, W, 3) uint8 RGB pixels of an encoded frame: a read-only view of PPM bytes, a fresh array otherwise."""
    if data[:2] == b"P6":
        return _ppm_view(data)
    # IMREAD_COLOR_RGB (OpenCV >= 4.10; setup.cfg pins 5.0): the decoder writes RGB itself, no conversion pass
    import cv2  # see encode_frame

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)
    if arr is None:
        raise FrameDecodeError(f"data: got {len(data)} bytes that OpenCV cannot decode, expected a JPEG or PNG image")
    return arr


def _ppm_view(data: bytes | memoryview) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of binary PPM bytes as a view (8-bit P6, as encode_frame writes it)."""
    head = _PPM_HEADER.match(data[:64])
    if head is None:
        raise FrameDecodeError(f"data: got {bytes(data[:16])!r}..., expected an 8-bit binary PPM header 'P6 W H 255'")
    w, h = int(head.group(1)), int(head.group(2))
    if len(data) - head.end() != h * w * 3:
        raise FrameDecodeError(f"data: got {len(data) - head.end()} pixel bytes, expected {h * w * 3} for {w}x{h} RGB")
    return np.frombuffer(data, dtype=np.uint8, offset=head.end()).reshape(h, w, 3)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): the frame header (size)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: markers without a length field
_JPEG_SEGMENT = struct.Struct(">BBH")  # 0xFF, marker, segment length
_HW16 = struct.Struct(">HH")
_WH32 = struct.Struct(">II")


def frame_size(data: bytes | memoryview) -> tuple[int, int]:
    """(H, W) of an encoded frame read from its header alone, the size a decoder would allocate.

    PPM, PNG (IHDR) and JPEG (the start-of-frame segment) are read here in microseconds; a header this does not
    follow (another format, a JPEG with bytes between its segments) is left to PIL, which also reads the header
    only. Raises FrameDecodeError when no header gives a size.
    """
    start = bytes(data[:64])
    if start[:2] == b"P6":  # what _pixels reads as PPM
        head = _PPM_HEADER.match(start)
        if head is None:
            raise FrameDecodeError(f"data: got {start[:16]!r}..., expected an 8-bit binary PPM header 'P6 W H 255'")
        return int(head.group(2)), int(head.group(1))
    if start[:8] == _PNG_SIGNATURE and start[12:16] == b"IHDR" and len(start) >= 24:
        w, h = _WH32.unpack_from(start, 16)
        return h, w
    n = len(data)
    if start[:3] == b"\xff\xd8\xff":
        pos = 2
        while pos + 4 <= n:
            ff, marker, length = _JPEG_SEGMENT.unpack_from(data, pos)
            if ff != 0xFF:
                break
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in _JPEG_NO_LENGTH:
                pos += 2
                continue
            if marker == 0xD9 or marker == 0xDA:  # end of image, start of scan: no frame header before them
                break
            if marker in _JPEG_SOF:
                if length < 8 or pos + 9 > n:
                    break
                h, w = _HW16.unpack_from(data, pos + 5)
                return h, w
            if length < 2:
                break
            pos += 2 + length
    return _pil_size(data)


def _pil_size(data: bytes | memoryview) -> tuple[int, int]:
    """(H, W) from PIL's header parser (it decodes no pixels); FrameDecodeError when PIL cannot read one."""
    from PIL import Image  # only for frames the header parsers above do not follow

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            w, h = im.size
    except Exception as err:  # PIL raises many types for bytes that are not an image (and for huge headers)
        raise FrameDecodeError(
            f"data: got {len(data)} bytes whose header gives no image size ({type(err).__name__}), "
            "expected a JPEG or PNG image"
        ) from None
    return int(h), int(w)


def parse_json(raw: bytes | str) -> Any:
    """A record's JSON member parsed (orjson, about 2.4x the standard parser on our records).

    Text orjson refuses (NaN / Infinity, which `json.dumps` writes; integers past 64 bits) goes to the standard
    parser, which accepts exactly what `json.dumps` writes; damaged JSON raises its ValueError, and so does JSON
    nested too deeply for either parser (orjson stops at 1024 levels; the standard parser would recurse until
    Python's recursion limit, a RecursionError).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
        except RecursionError:
            raise ValueError("JSON nested too deeply for the standard parser") from None


def _check_frame_pixels(size: tuple[int, int]) -> None:
    """SampleError when a frame of `size` (H, W) would exceed MAX_FRAME_PIXELS once decoded."""
    if size[0] * size[1] > MAX_FRAME_PIXELS:
        _fail("media.size", list(size), f"at most {MAX_FRAME_PIXELS} pixels a frame (PIL's decompression-bomb limit)")


def _check_frame_headers(frames: Sequence[bytes | memoryview], size: tuple[int, int], indices: Sequence[int]) -> None:
    """FrameDecodeError naming the first of `frames[indices]` whose header does not give `size` (H, W): what a decoder
    would allocate, checked before it does."""
    size = tuple(size)
    i = -1
    try:
        for i in indices:
            got = frame_size(frames[i])
            if got != size:
                raise FrameDecodeError(
                    f"its header gives {got[0]}x{got[1]} (H x W), expected media.size {size[0]}x{size[1]} (not decoded)"
                )
    except FrameDecodeError as err:
        raise FrameDecodeError(f"media.frames[{i}]: {err}") from None


def transcode_media(media: Media, ext: str) -> None:
    """Re-encode every frame of `media` as `ext` in place (decoded once, pixels kept exactly for png and ppm)."""
    if media.ext == ext:
        return
    media.frames = [encode_frame(decode_frame(f), ext=ext) for f in media.frames]
    media.ext = ext


@dataclass
class Media:
    """The pixels of a sample: encoded frames in order plus their common size (H, W)."""

    kind: str
    frames: list[bytes]  # or read-only memoryviews: the shard reader hands frames on as slices of the shard's map
    size: tuple[int, int]
    ext: str = "jpg"
    fps: float | None = None
    frame_ids: list[Any] | None = None

    @property
    def num_frames(self) -> int:
        """Number of frames."""
        return len(self.frames)

    def __getstate__(self) -> dict:
        """Pickled (and copied) with every frame as bytes: a memoryview frame cannot be pickled."""
        state = dict(self.__dict__)
        state["frames"] = [f if isinstance(f, bytes) else bytes(f) for f in self.frames]
        return state


@dataclass
class ObjectTrack:
    """One object: COCO RLE masks keyed by frame index (absent frames allowed), optional category/caption."""

    masks: dict[int, dict] = field(default_factory=dict)
    category: str | None = None
    caption: str | None = None


@dataclass
class Prompt:
    """One visual prompt in source pixels: point [x, y], box [x1, y1, x2, y2] or mask RLE, on one frame."""

    type: str
    frame: int
    object_id: int | None = None
    coords: list[float] | None = None
    rle: dict | None = None


@dataclass
class Turn:
    """One conversation turn; see the module docstring for seg_objects / memory_objects."""

    role: str
    text: str
    seg_objects: list[int] = field(default_factory=list)
    memory_objects: list[int] = field(default_factory=list)


@dataclass
class Sample:
    """One example of any source; `validate()` before writing, `to_record()` / `from_record()` for shards."""

    key: str
    source: str
    split: str
    task: str
    media: Media
    objects: dict[int, ObjectTrack] = field(default_factory=dict)
    prompts: list[Prompt] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    choices: list[str] | None = None
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ validation
    def validate(self, check_frames: bool = False) -> Sample:
        """Check every field; raise SampleError naming field, value and expectation. Returns self."""
        if not is_key(self.key):
            _fail("key", self.key, "a non-empty string of [A-Za-z0-9_-] (no dots or slashes); see make_key()")
        for name in ("source", "split"):
            v = getattr(self, name)
            if not is_key(v):
                _fail(name, v, "a non-empty string of [A-Za-z0-9_-]")
        if self.task not in TASKS:
            _fail("task", self.task, f"one of {sorted(TASKS)}")
        self._validate_media(check_frames)
        h, w = self.media.size
        t = self.media.num_frames
        self._validate_objects(h, w, t)
        self._validate_prompts(h, w, t)
        self._validate_turns()
        if self.answer is not None and not isinstance(self.answer, str):
            _fail("answer", self.answer, "a string or None")
        if self.choices is not None:
            if not isinstance(self.choices, list) or not all(isinstance(c, str) for c in self.choices):
                _fail("choices", self.choices, "a list of strings or None")
            if len(self.choices) < 2:
                _fail("choices", self.choices, "at least 2 choices")
        if not isinstance(self.meta, dict):
            _fail("meta", self.meta, "a dict")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            _fail("meta", self.meta, f"JSON-serialisable values ({e})")
        except RecursionError:
            _fail("meta", "nested too deeply", "JSON-serialisable values")
        return self

    def _validate_media(self, check_frames: bool) -> None:
        m = self.media
        if not isinstance(m, Media):
            _fail("media", m, "a Media")
        if m.kind not in MEDIA_KINDS:
            _fail("media.kind", m.kind, f"one of {MEDIA_KINDS}")
        if not isinstance(m.frames, list) or not m.frames:
            _fail("media.frames", m.frames, "a non-empty list of encoded images")
        for i, f in enumerate(m.frames):
            if not isinstance(f, (bytes, bytearray, memoryview)) or not f:
                _fail(f"media.frames[{i}]", type(f).__name__, "non-empty encoded image bytes")
        if m.kind == "image" and len(m.frames) != 1:
            _fail("media.frames", f"{len(m.frames)} frames", "exactly 1 frame for kind 'image'")
        size = tuple(m.size) if isinstance(m.size, (list, tuple)) else m.size
        if (
            not isinstance(size, tuple)
            or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size)
        ):
            _fail("media.size", m.size, "(H, W), two positive integers")
        m.size = (int(size[0]), int(size[1]))
        _check_frame_pixels(m.size)
        if m.ext not in FRAME_EXTS:
            _fail("media.ext", m.ext, f"one of {FRAME_EXTS}")
        if m.fps is not None and not (isinstance(m.fps, (int, float)) and m.fps > 0):
            _fail("media.fps", m.fps, "a positive number or None")
        if m.frame_ids is not None and (not isinstance(m.frame_ids, list) or len(m.frame_ids) != len(m.frames)):
            _fail("media.frame_ids", m.frame_ids, f"None or a list of {len(m.frames)} ids (one per frame)")
        if check_frames:
            for i, f in enumerate(m.frames):
                try:
                    header = frame_size(f)
                    arr = decode_frame(bytes(f)) if header == m.size else None  # another size is not decoded
                except FrameDecodeError:
                    _fail(f"media.frames[{i}]", f"{len(f)} bytes", "a decodable JPEG or PNG image")
                if arr is None:
                    _fail(f"media.frames[{i}]", f"header size {header}", f"media.size {m.size}")
                if arr.shape[:2] != m.size:
                    _fail(f"media.frames[{i}]", f"decoded size {arr.shape[:2]}", f"media.size {m.size}")

    def _validate_rle(self, name: str, rle: Any, h: int, w: int) -> None:
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            _fail(name, rle, "a COCO RLE dict {'size': [H, W], 'counts': str} (pixelqa.data.masks.encode)")
        if list(rle["size"]) != [h, w]:
            _fail(f"{name}.size", list(rle["size"]), f"the frame size [{h}, {w}]")
        if not isinstance(rle["counts"], str):
            _fail(f"{name}.counts", type(rle["counts"]).__name__, "a compressed RLE string (masks.encode)")

    def _validate_objects(self, h: int, w: int, t: int) -> None:
        if not isinstance(self.objects, dict):
            _fail("objects", self.objects, "a dict object id -> ObjectTrack")
        for oid, obj in self.objects.items():
            if not isinstance(oid, (int, np.integer)) or isinstance(oid, bool) or oid < 0:
                _fail("objects (id)", oid, "integer object ids >= 0")
            if not isinstance(obj, ObjectTrack):
                _fail(f"objects[{oid}]", obj, "an ObjectTrack")
            for fi, rle in obj.masks.items():
                if not isinstance(fi, (int, np.integer)) or not 0 <= fi < t:
                    _fail(f"objects[{oid}].masks (frame)", fi, f"a frame index in [0, {t - 1}]")
                self._validate_rle(f"objects[{oid}].masks[{fi}]", rle, h, w)
            for attr in ("category", "caption"):
                v = getattr(obj, attr)
                if v is not None and not isinstance(v, str):
                    _fail(f"objects[{oid}].{attr}", v, "a string or None")

    def _validate_prompts(self, h: int, w: int, t: int) -> None:
        for i, p in enumerate(self.prompts):
            name = f"prompts[{i}]"
            if not isinstance(p, Prompt):
                _fail(name, p, "a Prompt")
            if p.type not in PROMPT_TYPES:
                _fail(f"{name}.type", p.type, f"one of {PROMPT_TYPES}")
            if not isinstance(p.frame, (int, np.integer)) or not 0 <= p.frame < t:
                _fail(f"{name}.frame", p.frame, f"a frame index in [0, {t - 1}]")
            if p.object_id is not None and p.object_id not in self.objects:
                _fail(f"{name}.object_id", p.object_id, f"None or one of the object ids {sorted(self.objects)}")
            if p.type == "mask":
                if p.rle is None:
                    _fail(f"{name}.rle", None, "an RLE for a mask prompt")
                self._validate_rle(f"{name}.rle", p.rle, h, w)
                continue
            n = 2 if p.type == "point" else 4
            if not isinstance(p.coords, (list, tuple)) or len(p.coords) != n:
                _fail(f"{name}.coords", p.coords, f"{n} numbers for a {p.type} prompt")
            if not all(isinstance(c, (int, float, np.number)) and np.isfinite(c) for c in p.coords):
                _fail(f"{name}.coords", p.coords, "finite numbers")
            xs, ys = p.coords[0::2], p.coords[1::2]
            if min(xs) < 0 or max(xs) > w or min(ys) < 0 or max(ys) > h:
                _fail(f"{name}.coords", list(p.coords), f"source pixels inside the frame: x in [0, {w}], y in [0, {h}]")
            if p.type == "box" and (p.coords[2] < p.coords[0] or p.coords[3] < p.coords[1]):
                _fail(f"{name}.coords", list(p.coords), "a box [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")

    def _validate_turns(self) -> None:
        if not isinstance(self.turns, list) or not self.turns:
            _fail("turns", self.turns, "a non-empty list of Turn")
        refs = 0
        for i, turn in enumerate(self.turns):
            name = f"turns[{i}]"
            if not isinstance(turn, Turn):
                _fail(name, turn, "a Turn")
            if turn.role not in ROLES:
                _fail(f"{name}.role", turn.role, f"one of {ROLES}")
            expected_role = ROLES[i % 2]
            if turn.role != expected_role:
                _fail(f"{name}.role", turn.role, f"'{expected_role}' (turns alternate, starting with 'user')")
            if not isinstance(turn.text, str):
                _fail(f"{name}.text", turn.text, "a string")
            if MEM in turn.text:
                _fail(f"{name}.text", turn.text, f"no {MEM} (list memory_objects; collate renders the preamble)")
            n_seg = count_seg(turn.text)
            if turn.role == "user":
                refs += count_ref(turn.text)
                if n_seg:
                    _fail(f"{name}.text", turn.text, f"no {SEG} in a user turn")
                if turn.seg_objects:
                    _fail(f"{name}.seg_objects", turn.seg_objects, "[] on a user turn")
                for oid in turn.memory_objects:
                    if oid not in self.objects:
                        _fail(f"{name}.memory_objects", turn.memory_objects, f"ids among {sorted(self.objects)}")
            else:
                if count_ref(turn.text):
                    _fail(f"{name}.text", turn.text, f"no {REF} in an assistant turn")
                if turn.memory_objects:
                    _fail(f"{name}.memory_objects", turn.memory_objects, "[] on an assistant turn")
                if len(turn.seg_objects) != n_seg:
                    _fail(f"{name}.seg_objects", turn.seg_objects, f"{n_seg} object ids, one per {SEG} in the text")
                for oid in turn.seg_objects:
                    if oid not in self.objects:
                        _fail(f"{name}.seg_objects", turn.seg_objects, f"ids among {sorted(self.objects)}")
        if refs != len(self.prompts):
            _fail(f"{REF} count in user turns", refs, f"{len(self.prompts)} (one per prompt)")

    # ------------------------------------------------------------------ (de)serialisation
    def seg_object_ids(self) -> list[int]:
        """Object id of every <|seg|> of the conversation, in order."""
        return [oid for turn in self.turns if turn.role == "assistant" for oid in turn.seg_objects]

    def to_json(self) -> dict:
        """Everything but the pixels, as a JSON-ready dict (object ids and frame keys become strings)."""
        m = self.media
        return {
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "source": self.source,
            "split": self.split,
            "task": self.task,
            "media": {
                "kind": m.kind,
                "num_frames": m.num_frames,
                "size": [int(m.size[0]), int(m.size[1])],
                "ext": m.ext,
                "fps": m.fps,
                "frame_ids": m.frame_ids,
            },
            "objects": {
                str(oid): {
                    "masks": {str(fi): dict(rle) for fi, rle in sorted(obj.masks.items())},
                    "category": obj.category,
                    "caption": obj.caption,
                }
                for oid, obj in sorted(self.objects.items())
            },
            "prompts": [
                {"type": p.type, "frame": int(p.frame), "object_id": p.object_id, "coords": p.coords, "rle": p.rle}
                for p in self.prompts
            ],
            "turns": [
                {
                    "role": t.role,
                    "text": t.text,
                    "seg_objects": list(t.seg_objects),
                    "memory_objects": list(t.memory_objects),
                }
                for t in self.turns
            ],
            "answer": self.answer,
            "choices": self.choices,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict, frames: Sequence[bytes]) -> Sample:
        """Rebuild a Sample from `to_json()` output plus the encoded frames (not validated).

        What stored data could harm a reader with is checked (SampleError), even where `validate()` is skipped:
        the key, which `inspect` makes a file name; media.size against MAX_FRAME_PIXELS and each frame's header size
        against media.size, which is what decoding the frame would allocate (a tiny PNG can say, and hold,
        12000 x 12000); and the nesting of the free-form
        values a batch carries (meta, choices, answer: at most MAX_NESTING levels, which pickle can send from a
        DataLoader worker). These cost microseconds.
        """
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            _fail("schema_version", version, f"{SCHEMA_VERSION} (rebuild the shards with this version)")
        if not is_key(d["key"]):
            _fail("key", d["key"], "a non-empty string of [A-Za-z0-9_-] (no dots or slashes); see make_key()")
        md = d["media"]
        if len(frames) != md["num_frames"]:
            _fail("frames", f"{len(frames)} frame files", f"media.num_frames = {md['num_frames']}")
        media = Media(
            kind=md["kind"],
            frames=[f if isinstance(f, (bytes, memoryview)) else bytes(f) for f in frames],
            size=(int(md["size"][0]), int(md["size"][1])),
            ext=md["ext"],
            fps=md.get("fps"),
            frame_ids=md.get("frame_ids"),
        )
        _check_frame_pixels(media.size)
        try:
            _check_frame_headers(media.frames, media.size, range(len(media.frames)))
        except FrameDecodeError as err:
            raise SampleError(str(err)) from None
        for name, value in (("meta", d.get("meta")), ("choices", d.get("choices")), ("answer", d.get("answer"))):
            if isinstance(value, (dict, list)) and _too_deep(value):
                _fail(name, f"a {type(value).__name__} nested too deeply", f"at most {MAX_NESTING} levels of nesting")
        objects = {
            int(oid): ObjectTrack(
                masks={int(fi): rle for fi, rle in o["masks"].items()},
                category=o.get("category"),
                caption=o.get("caption"),
            )
            for oid, o in d["objects"].items()
        }
        prompts = [
            Prompt(p["type"], p["frame"], p.get("object_id"), p.get("coords"), p.get("rle")) for p in d["prompts"]
        ]
        turns = [
            Turn(t["role"], t["text"], list(t.get("seg_objects", [])), list(t.get("memory_objects", [])))
            for t in d["turns"]
        ]
        return cls(
            key=d["key"],
            source=d["source"],
            split=d["split"],
            task=d["task"],
            media=media,
            objects=objects,
            prompts=prompts,
            turns=turns,
            answer=d.get("answer"),
            choices=d.get("choices"),
            meta=d.get("meta") or {},
        )

    def to_record(self) -> dict:
        """A webdataset record: __key__, json (UTF-8 bytes, sorted keys) and one file per frame 000.jpg, ..."""
        rec: dict[str, Any] = {
            "__key__": self.key,
            "json": json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8"),
        }
        for i, f in enumerate(self.media.frames):
            rec[f"{i:03d}.{self.media.ext}"] = bytes(f)
        return rec

    @classmethod
    def from_record(cls, record: dict) -> Sample:
        """Rebuild a Sample from a raw webdataset record (values are bytes; `json` may be bytes, str or dict)."""
        if "json" not in record:
            _fail("record", sorted(k for k in record if not k.startswith("_")), "a 'json' entry")
        raw = record["json"]
        d = raw if isinstance(raw, dict) else parse_json(raw)
        ext = d["media"]["ext"]
        n = d["media"]["num_frames"]
        suffix = "." + ext
        if isinstance(n, int) and sum(1 for k in record if k.endswith(suffix)) == n:
            # What to_record writes: 000.<ext> ... in order. Any other layout takes the checking path below.
            try:
                frames = [record[f"{i:03d}{suffix}"] for i in range(n)]
            except KeyError:
                frames = None
            if frames is not None:
                return cls.from_json(d, frames)
        frame_keys = [k for k in record if k.endswith(suffix) and k.split(".", 1)[0].isdigit()]
        frame_keys.sort(key=lambda k: int(k.split(".", 1)[0]))
        if [int(k.split(".", 1)[0]) for k in frame_keys] != list(range(len(frame_keys))):
            _fail("record frames", frame_keys, f"files 000.{ext}, 001.{ext}, ... without gaps")
        return cls.from_json(d, [record[k] for k in frame_keys])

    def decode_frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Decode frames (all, or `indices`) to (T, H, W, 3) uint8 RGB; a frame of another size raises.

        Every frame's header is checked against media.size before any pixels are decoded, so nothing is allocated
        for a size the sample does not declare (FrameDecodeError).
        """
        idx = list(range(self.media.num_frames) if indices is None else indices)
        if not idx:
            raise ValueError("indices: got none, expected at least one frame index")
        _check_frame_headers(self.media.frames, self.media.size, idx)
        first = _pixels(self.media.frames[idx[0]])  # PPM: a view, copied once into `out`
        h, w = self.media.size
        if first.shape[:2] not in ((h, w), (w, h)):  # (W, H): a JPEG's EXIF rotation, which OpenCV applies
            got = first.shape[:2]
            raise FrameDecodeError(f"media.frames[{idx[0]}]: decoded to {got}, expected media.size ({h}, {w})")
        out = np.empty((len(idx), *first.shape), dtype=np.uint8)  # each frame decoded into place: no stacking copy
        out[0] = first
        for j, i in enumerate(idx[1:], start=1):
            decode_frame(self.media.frames[i], out=out[j])
        return out
