"""Visual prompts from the command line and the text that places them.

`--point x,y[,t]`, `--box x1,y1,x2,y2[,t]` (pixels of the media, frame t of the media, default 0) and
`--mask PNG[,t]` (non-zero pixels, the media's size) become `PromptSpec`s numbered 0, 1, ... in the order given
(across the three options); `check_prompts` validates them against the media and `model_prompts` turns them into
the model's normalised `Point` / `Box` / `Mask`. `place_refs` puts one `[k] <|ref|>` per prompt before a text that
holds none.
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
        super().__init__(option_strings, dest, **kwargs)


def read_mask_png(path: str, arg: str) -> np.ndarray:
    """(H, W) bool of a mask PNG: non-zero pixels (palette / grey index, or any channel of a colour image)."""
    p = Path(path)
    if not p.is_file():
        raise PredictInputError(f"--mask: {path!r} (in {arg!r}) does not exist")
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)  # upright like the media (media.py), as the user drew it
            grey = im.mode in ("1", "L", "P", "I", "I;16", "F")
            a = np.asarray(im if grey else im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PredictInputError(f"--mask: {path!r} cannot be read as an image: {exc}") from None
    return a > 0 if a.ndim == 2 else (a > 0).any(-1)


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
                raise PredictInputError(f"--mask: {s.mask_path!r} is empty (no non-zero pixel)")
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
