"""Visual prompts from the command line and the text that places them.

`--point x,y[,t]`, `--box x1,y1,x2,y2[,t]` (pixels of the media, frame t of the media, default 0) and
`--mask PNG[,t]` (an image of the media's size, read as `read_mask_png` says) become `PromptSpec`s numbered 0, 1,
... in the order given (across the three options); `check_prompts` validates them against the media and
`model_prompts` turns them into the model's normalised `Point` / `Box` / `Mask`. `place_refs` puts one
`[k] <|ref|>` per prompt before a text that holds none.

Which pixels of a mask image are the object (`read_mask_png`, MASK_RULE):
- transparency (RGBA, LA, PA, a PNG tRNS chunk) that leaves some pixels transparent and others not: the opaque
  pixels (alpha > 127), whatever their colour: a cut-out or selection exported by an editor;
- a palette image whose index 0 is black (DAVIS / VOC annotations): indices > 0; any other palette is read by its
  colours (an editor's palette may put white first);
- 8-bit grey or colour: values above 127 (half range; in any channel) when the image has such values, so JPEG
  noise and soft edges do not count; a mask whose values all lie in 0..127 (0/1 masks, object-id maps) takes every
  non-zero pixel;
- 1-bit, 16-bit, 32-bit and float images: non-zero pixels.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pixelqa.model.chat import Box, Mask, Point
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.media import MediaInfo
from pixelqa.prompt_format import REF, count_ref, object_tag

USAGE = {"point": "x,y[,t]", "box": "x1,y1,x2,y2[,t]", "mask": "PNG[,t]"}
HALF = 127  # 8-bit values above this are the object in a mask that has any (JPEG noise, soft edges below)
MASK_RULE = (
    "opaque pixels when some are transparent; a palette PNG with black at index 0 (DAVIS) by index > 0, other "
    "palettes by colour; 8-bit grey / colour above 127 (any channel) when some value is, else non-zero (0/1 "
    "masks); 16-bit non-zero"
)
HELP = {
    "point": "a point prompt at pixel x,y of frame t (default 0); prompts are numbered 0, 1, ... in command-line "
    "order across --point / --box / --mask",
    "box": "a box prompt, pixels x1,y1,x2,y2 of frame t (default 0)",
    "mask": f"a mask prompt for frame t (default 0): an image (PNG) of the media's size; object = {MASK_RULE}",
}


@dataclass
class PromptSpec:
    """One visual prompt as the user gave it: kind, pixel coords (or a mask file), original frame index."""

    kind: str  # point | box | mask
    arg: str  # the text given on the command line (for messages and run.json)
    coords: tuple[float, ...] = ()
    frame: int = 0
    mask_path: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) bool, read by check_prompts


def _number(kind: str, arg: str, text: str) -> float:
    """A float of a prompt argument, or the one-line error naming the option."""
    try:
        return float(text)
    except ValueError:
        raise PredictInputError(f"--{kind}: got {arg!r}, expected {USAGE[kind]} with numbers") from None


def _frame(kind: str, arg: str, text: str) -> int:
    """The frame index of a prompt argument (an integer >= 0)."""
    try:
        t = int(text)
    except ValueError:
        t = -1
    if t < 0:
        raise PredictInputError(f"--{kind}: got frame {text!r} in {arg!r}, expected an integer frame index >= 0")
    return t


def _mask_path_and_frame(arg: str) -> tuple[str, str]:
    """(path, frame text or "") of a `--mask` value; file names may hold commas (`my,mask.png`)."""
    if "," not in arg or Path(arg).is_file():
        return arg, ""
    path, _, t = arg.rpartition(",")
    # a tail that is not a frame number belongs to the file name, unless what precedes it is a file (a bad frame)
    if re.fullmatch(r"\s*[+-]?\d+\s*", t) or Path(path).is_file():
        return path, t
    return arg, ""


def parse_prompt(kind: str, arg: str) -> PromptSpec:
    """One `--point` / `--box` / `--mask` argument -> PromptSpec (no media checks yet)."""
    if kind == "mask":
        path, t = _mask_path_and_frame(arg)
        if not path:
            raise PredictInputError(f"--mask: got {arg!r}, expected {USAGE['mask']}")
        return PromptSpec("mask", arg, (), _frame(kind, arg, t.strip()) if t else 0, mask_path=path)
    parts = [p.strip() for p in arg.split(",")]
    n = 2 if kind == "point" else 4
    if len(parts) not in (n, n + 1):
        raise PredictInputError(f"--{kind}: got {arg!r}, expected {USAGE[kind]}")
    coords = tuple(_number(kind, arg, p) for p in parts[:n])
    frame = _frame(kind, arg, parts[n]) if len(parts) > n else 0
    return PromptSpec(kind, arg, coords, frame)


class PromptAction(argparse.Action):
    """argparse action appending (kind, value) to one shared list, so prompts keep their command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.metavar_kind, values))
        setattr(namespace, self.dest, items)

    def __init__(self, option_strings, dest, kind: str = "point", **kwargs):
        self.metavar_kind = kind
        kwargs.setdefault("help", HELP.get(kind))
        super().__init__(option_strings, dest, **kwargs)


def _above_half(a: np.ndarray) -> np.ndarray:
    """Object pixels of 8-bit values (H, W) or (H, W, C): above HALF when any value is (then any channel), else
    non-zero."""
    cut = HALF if a.size and int(a.max()) > HALF else 0
    hit = a > cut
    return hit if hit.ndim == 2 else hit.any(-1)


def mask_pixels(im: Image.Image) -> np.ndarray:
    """(H, W) bool: the object pixels of a mask image, by the rules of the module docstring (MASK_RULE)."""
    if "A" in im.getbands() or "transparency" in im.info:
        opaque = _above_half(np.asarray(im.convert("RGBA"))[..., 3])
        if opaque.any() and not opaque.all():  # a cut-out: what is not transparent is the object
            return opaque
    if im.mode == "P":
        palette = im.getpalette()
        if palette is None or list(palette[:3]) == [0, 0, 0]:  # a label map: index 0 (black) is the background
            return np.asarray(im) > 0
        im = im.convert("RGB")  # another palette (white first, say): the colours as painted
    if im.mode in ("1", "I", "F") or im.mode.startswith("I;16"):
        return np.asarray(im) != 0
    return _above_half(np.asarray(im if im.mode == "L" else im.convert("RGB")))


def read_mask_png(path: str, arg: str) -> np.ndarray:
    """(H, W) bool of a mask image (PNG, or any image Pillow reads): its object pixels (`mask_pixels`)."""
    p = Path(path)
    where = "" if arg == path else f" (in {arg!r})"  # the value itself names the file when no `,t` was given
    if p.is_dir():
        raise PredictInputError(f"--mask: {path!r}{where} is a folder; expected a mask image (PNG)")
    if not p.is_file():
        raise PredictInputError(f"--mask: {path!r}{where} does not exist; expected a mask image (PNG)")
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)  # upright like the media (media.py), as the user drew it
            return mask_pixels(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PredictInputError(f"--mask: {path!r} cannot be read as an image: {exc}") from None


def check_prompts(specs: list[PromptSpec], info: MediaInfo) -> list[PromptSpec]:
    """Validate prompts against the media (frame in range, inside the frame, mask of the frame's size); read masks."""
    h, w = info.height, info.width
    for s in specs:
        if not s.frame < info.num_frames:
            raise PredictInputError(
                f"--{s.kind}: frame {s.frame} in {s.arg!r} is past the end; the media has {info.num_frames} "
                f"frame(s) (0..{info.num_frames - 1})"
            )
        if s.kind == "point":
            x, y = s.coords
            if not (0 <= x <= w and 0 <= y <= h):
                raise PredictInputError(
                    f"--point: {s.arg!r} is outside the {w}x{h} frame (0 <= x <= {w}, 0 <= y <= {h})"
                )
        elif s.kind == "box":
            x1, y1, x2, y2 = s.coords
            if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
                raise PredictInputError(
                    f"--box: {s.arg!r} is not a box inside the {w}x{h} frame (0 <= x1 < x2 <= {w}, 0 <= y1 < y2 <= {h})"
                )
        else:
            m = read_mask_png(s.mask_path or "", s.arg)
            if m.shape != (h, w):
                raise PredictInputError(
                    f"--mask: {s.mask_path!r} is {m.shape[1]}x{m.shape[0]}, expected the media's size {w}x{h}"
                )
            if not m.any():
                raise PredictInputError(f"--mask: {s.mask_path!r} is empty (no object pixel; object = {MASK_RULE})")
            s.mask = m
    return specs


def model_prompts(specs: list[PromptSpec], info: MediaInfo, frame_ids: list[int]) -> list[Point | Box | Mask]:
    """The model's prompts (normalised coords) on positions among the read frames `frame_ids`; ids 0, 1, ..."""
    h, w = info.height, info.width
    out: list[Point | Box | Mask] = []
    for k, s in enumerate(specs):
        t = frame_ids.index(s.frame)  # prompt frames are always read (see frames.sam_frame_ids)
        if s.kind == "point":
            out.append(Point(s.coords[0] / w, s.coords[1] / h, frame=t, object_id=k))
        elif s.kind == "box":
            x1, y1, x2, y2 = s.coords
            out.append(Box(x1 / w, y1 / h, x2 / w, y2 / h, frame=t, object_id=k))
        else:
            out.append(Mask(torch.from_numpy(np.asarray(s.mask, dtype=bool)), frame=t, object_id=k))
    return out


def place_refs(text: str, object_ids: list[int]) -> str:
    """The text with one `<|ref|>` per prompt: as given when it holds them, else `[k] <|ref|>` put before it."""
    if not text or not text.strip():
        raise PredictInputError("--text: got an empty text, expected a question or instruction")
    # the model's own markers (<|seg|>, <|mem|>, the chat template's <|im_start|>, <|image_pad|>, ...) are written
    # by the model or the processor; typed by a user they would misalign memory, masks or media tokens
    for token in re.findall(r"<\|[A-Za-z_]+\|>", text):
        if token != REF:
            raise PredictInputError(
                f"--text: holds {token}, a token the model or its processor writes; expected plain text, with "
                f"{REF} marking where a prompt goes and [k] naming a memory object"
            )
    n = count_ref(text)
    if n == len(object_ids):
        return text
    if n == 0:
        return " ".join(f"{object_tag(k)} {REF}" for k in object_ids) + " " + text.strip()
    raise PredictInputError(
        f"--text: holds {n} {REF} but {len(object_ids)} prompt(s) were given; expected one {REF} per prompt, in "
        f"order, or none (then they are placed before the text)"
    )
