"""Visual-prompt sampling from ground-truth masks, and instruction templates for converters.

Training (paper §3.4, stage 1): a prompt drawn from an object's mask is, with probability 1/2, a point
uniformly inside the mask, else a box: the mask's tight box with each side jittered by up to
`jitter` x the box size (clipped to the frame, never empty).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from pixelqa.data import masks
from pixelqa.data.schema import Prompt, Sample
from pixelqa.prompt_format import SEG_RESPONSES, count_ref, prefill_answer

PROMPT_MODES: tuple[str, ...] = ("keep", "point_box", "point", "box")


def sample_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A point (x, y) at the centre of a pixel drawn uniformly from a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask: got an empty mask, expected at least one foreground pixel")
    k = int(rng.integers(0, len(xs)))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def sample_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> tuple[float, float, float, float]:
    """The tight box (x1, y1, x2, y2) of a non-empty (H, W) mask, each side moved by up to `jitter` x its size."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask: got an empty mask, expected at least one foreground pixel")
    h, w = mask.shape
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1
    bw, bh = x2 - x1, y2 - y1
    dx = rng.uniform(-jitter, jitter, size=2) * bw
    dy = rng.uniform(-jitter, jitter, size=2) * bh
    nx1, nx2 = np.clip([x1 + dx[0], x2 + dx[1]], 0, w)
    ny1, ny2 = np.clip([y1 + dy[0], y2 + dy[1]], 0, h)
    if nx2 - nx1 < 1 or ny2 - ny1 < 1:  # jitter collapsed a tiny box: fall back to the tight one
        return x1, y1, x2, y2
    return float(nx1), float(ny1), float(nx2), float(ny2)


def resample_prompts(sample: Sample, rng: np.random.Generator, mode: str = "point_box", jitter: float = 0.1) -> Sample:
    """Replace each prompt that has an object mask on its frame by a point or a box drawn from that mask.

    mode: "keep" (no change), "point_box" (1/2 point, 1/2 box), "point", "box". Prompts without an
    object, or whose object has no non-empty mask on the prompt frame, are kept. Changes `sample` in place.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"mode: got {mode!r}, expected one of {PROMPT_MODES}")
    if mode == "keep":
        return sample
    new: list[Prompt] = []
    for p in sample.prompts:
        obj = sample.objects.get(p.object_id) if p.object_id is not None else None
        rle = obj.masks.get(p.frame) if obj is not None else None
        if rle is None or masks.area(rle) == 0:
            new.append(p)
            continue
        m = masks.decode(rle)
        kind = mode if mode != "point_box" else ("point" if rng.random() < 0.5 else "box")
        coords = sample_point(m, rng) if kind == "point" else sample_box(m, rng, jitter)
        new.append(Prompt(kind, p.frame, p.object_id, coords=list(coords)))
    sample.prompts = new
    return sample


# ---------------------------------------------------------------------------------------------- templates

# The segmentation instructions and answers are the released ones (`pixelqa.prompt_format.SEG_*`, shared with the
# evaluation); the region-caption lists below are this project's own (docs/departures.md).
REGION_CAPTION_QUESTIONS: tuple[str, ...] = (
    "Please describe {ref} in this {media}.",
    "What is {ref} in this {media}? Describe it briefly.",
    "Can you give a short description of {ref}?",
)
DETAILED_CAPTION_QUESTIONS: tuple[str, ...] = (
    "Please give a detailed description of {ref} in this {media}.",
    "Describe {ref} in detail.",
)


def pick(templates: Sequence[str], rng: np.random.Generator, **fields: str) -> str:
    """A random template filled with `fields`."""
    if not templates:
        raise ValueError("templates: got an empty list, expected at least one template")
    return templates[int(rng.integers(0, len(templates)))].format(**fields)


def seg_answer(object_ids: Sequence[int], rng: np.random.Generator) -> str:
    """Answer text of a segmentation request: a random released response for one object, the pre-fill form for
    several."""
    if len(object_ids) == 1:
        return pick(SEG_RESPONSES, rng)
    return prefill_answer(list(object_ids))


def prefill_prompts(sample: Sample) -> list[int]:
    """Indices (into `sample.prompts`) of the memory pre-fill prompts: a `[k] <|ref|>` whose object the answer to
    its own user turn segments (`[k] <|seg|>`), in the released one-round form and in the two-round form alike."""
    out: list[int] = []
    cursor = 0
    for i, turn in enumerate(sample.turns):
        if turn.role != "user":
            continue
        n = count_ref(turn.text)
        answer = sample.turns[i + 1] if i + 1 < len(sample.turns) else None
        segs = set(answer.seg_objects) if answer is not None else set()
        out.extend(k for k in range(cursor, cursor + n) if sample.prompts[k].object_id in segs)
        cursor += n
    return out


def memory_prompt_kind(key: str) -> str:
    """ "point" or "box", half the samples each, fixed by the sample key (salted): the release draws the kind once
    per annotation (its `mem_point_*` / `mem_box_*` types) and keeps it over repeats and epochs."""
    return "point" if zlib.crc32((key + "/memory_prompt").encode("utf-8")) % 2 == 0 else "box"


def redraw_memory_prompts(sample: Sample, rng: np.random.Generator, jitter: float = 0.1) -> Sample:
    """The pre-fill prompts of a memory sample as the release trains them: every one becomes a point or a box
    (`memory_prompt_kind` of the sample, the same for all its objects) drawn from its object's mask on a random
    frame where it is visible.

    Pre-fill prompts are those of `prefill_prompts` (the released one-round `*_qa_memory` samples have no memory
    turn, so the user turns' `memory_objects` cannot tell them); other prompts, and a pre-fill prompt whose object
    has no visible frame, are kept. Changes `sample` in place.
    """
    chosen = prefill_prompts(sample)
    if not chosen:
        return sample
    kind = memory_prompt_kind(sample.key)
    new = list(sample.prompts)
    for k in chosen:
        p = sample.prompts[k]
        obj = sample.objects.get(p.object_id) if p.object_id is not None else None
        visible = masks.visible_frames(obj.masks) if obj is not None else []
        if not visible:
            continue
        frame = visible[int(rng.integers(0, len(visible)))]
        m = masks.decode(obj.masks[frame])
        coords = sample_point(m, rng) if kind == "point" else sample_box(m, rng, jitter)
        new[k] = Prompt(kind, frame, p.object_id, coords=list(coords))
    sample.prompts = new
    return sample
