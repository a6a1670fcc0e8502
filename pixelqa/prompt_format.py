"""The text protocol shared by data and model: special tokens, object ids, frame tags, memory prompts.

Both `pixelqa.data` (building training text) and `pixelqa.model` (chat-time rewriting) use these
functions, so the two sides can never drift apart. This module imports nothing from either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

REF = "<REF>"  # placeholder for one visual prompt (point / box / mask) in the user text
MEM = "<MEM>"  # placeholder for one object-memory feature (one object on one frame)
SEG = "<SEG>"  # emitted by the model; its last hidden state is decoded into a mask
SPECIAL_TOKENS: tuple[str, ...] = (REF, MEM, SEG)

_OBJECT_ID = re.compile(r"\[(\d+)\]")
_PREFILL = re.compile(r"\[(\d+)\]\s*" + re.escape(SEG))
_MEMORY_LINE = re.compile(r"^\[(\d+)\]:((?:\s*<\d+>\s*" + re.escape(MEM) + r")+)\s*$")
_FRAME_MEM = re.compile(r"<(\d+)>\s*" + re.escape(MEM))


def object_tag(object_id: int) -> str:
    """Text tag of an object in the memory bank, e.g. ``[3]``."""
    if object_id < 1:
        raise ValueError(f"object_id: got {object_id}, expected an integer >= 1")
    return f"[{object_id}]"


def frame_tag(frame: int) -> str:
    """Text tag of a frame (0-based index in, 1-based tag out), e.g. frame 0 -> ``<1>``."""
    if frame < 0:
        raise ValueError(f"frame: got {frame}, expected an index >= 0")
    return f"<{frame + 1}>"


def prefill_answer(object_ids: Sequence[int]) -> str:
    """The memory pre-filling answer: ids followed by one <SEG> each."""
    if not object_ids:
        return "There are no relevant regions for this question."
    parts = " ".join(f"{object_tag(i)} {SEG}" for i in object_ids)
    return f"The relevant regions for this question are {parts}."


def parse_prefill(text: str) -> list[int]:
    """Object ids of a pre-filling answer, in the order of their <SEG> tokens."""
    return [int(m.group(1)) for m in _PREFILL.finditer(text)]


def count_seg(text: str) -> int:
    """Number of <SEG> tokens in a text."""
    return text.count(SEG)


def count_ref(text: str) -> int:
    """Number of <REF> tokens in a text."""
    return text.count(REF)


def memory_prompt(visible_frames: Mapping[int, Sequence[int]], num_frames: int, kind: str = "video") -> str:
    """The memory-injection preamble: one line per object with a <MEM> per frame it is visible on.

    ``visible_frames`` maps object id -> 0-based frame indices where the object has a non-empty mask.
    An object visible on no frame gets no line at all.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: got {num_frames}, expected >= 1")
    lines = []
    if kind == "video":
        lines.append(
            f"Here is a video with {num_frames} frames denoted as {frame_tag(0)} to {frame_tag(num_frames - 1)}. "
            "The highlighted regions are as follows:"
        )
    else:
        lines.append("Here is an image. The highlighted regions are as follows:")
    for obj_id in sorted(visible_frames):
        frames = sorted(set(visible_frames[obj_id]))
        for f in frames:
            if not 0 <= f < num_frames:
                raise ValueError(f"visible_frames[{obj_id}]: frame {f} outside [0, {num_frames - 1}]")
        if not frames:
            continue
        if kind == "video":
            body = " ".join(f"{frame_tag(f)} {MEM}" for f in frames)
        else:
            body = " ".join(MEM for _ in frames)
        lines.append(f"{object_tag(obj_id)}: {body}")
    return "\n".join(lines)


def parse_memory_prompt(text: str) -> list[tuple[int, int]]:
    """(object id, 0-based frame) of every <MEM> in a memory preamble, in text order.

    Image preambles (``[k]: <MEM>``) give frame 0.
    """
    refs: list[tuple[int, int]] = []
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^\[(\d+)\]:(.*)$", line)
        if not m or MEM not in m.group(2):
            continue
        obj_id, body = int(m.group(1)), m.group(2)
        framed = _FRAME_MEM.findall(body)
        if framed:
            refs.extend((obj_id, int(f) - 1) for f in framed)
        else:
            refs.extend((obj_id, 0) for _ in range(body.count(MEM)))
    if len(refs) != text.count(MEM):
        raise ValueError(f"text has {text.count(MEM)} {MEM} tokens but only {len(refs)} sit in '[k]: <t> {MEM}' lines")
    return refs


def object_ids_in(text: str) -> list[int]:
    """All object ids named as ``[k]`` in a text, in order of first mention."""
    seen: list[int] = []
    for m in _OBJECT_ID.finditer(text):
        k = int(m.group(1))
        if k not in seen:
            seen.append(k)
    return seen
