"""PixelQA (the UniPixel paper's benchmark): VideoRefer-Bench-Q with the mask prompts replaced by a point or a
box on the key frame; the model must segment the prompted objects on every frame and answer the MCQ.

Raw layout: the VideoRefer-Bench files (see `videorefer`): ``<root>/VideoRefer-Bench-Q.json`` + videos.

Splits are the three prompt protocols of the paper:

- ``point``: each object gets one point on the key frame ("frame_idx"): the mask pixel farthest from the
  mask's border (argmax of the L2 distance transform with the image border counting as background, first
  in row-major order on ties), at the pixel centre (x + 0.5, y + 0.5);
- ``box``: the tight box of the key-frame mask, [x1, y1, x2, y2] with exclusive x2 / y2 (no jitter);
- ``mix``: per sample, seeded by the sample key: one object -> point or box at random; n objects ->
  round(n / 2) of them (Python rounding) get a point, the others a box.

Targets: every object keeps its masks on all annotated frames (J&F is computed over them). The
conversation is the memory protocol: ``[k] <|ref|>`` pre-fill -> ``[k] <|seg|>``, then the MCQ with the
objects injected as memory; `answer` is the option letter, `choices` the option texts.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import cv2
import numpy as np

from pixelqa.data import masks
from pixelqa.data.registry import register_source
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample, make_key
from pixelqa.data.sources.videorefer import (
    _LETTER,
    VideoReferBench,
    build_objects,
    mcq_text,
    memory_turns,
    region_text,
    split_options,
)

PROTOCOLS = ("point", "box", "mix")
SEED = 0


def center_point(mask: np.ndarray) -> list[float]:
    """The pixel farthest from the background (border counts as background), as [x + 0.5, y + 0.5]."""
    if not mask.any():
        raise ValueError("mask: got an empty mask, expected at least one foreground pixel for a point prompt")
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 0)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(x) + 0.5, float(y) + 0.5]


def prompt_kinds(num_objects: int, protocol: str, key: str, seed: int = SEED) -> list[str]:
    """'point' / 'box' per object for a protocol; 'mix' draws from a generator seeded by (seed, key)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: got {protocol!r}, expected one of {PROTOCOLS}")
    if protocol != "mix":
        return [protocol] * num_objects
    rng = random.Random(seed * 1_000_003 + zlib.crc32(key.encode("utf-8")))
    if num_objects == 1:
        return [rng.choice(["point", "box"])]
    points = set(rng.sample(range(num_objects), round(num_objects / 2)))
    return ["point" if i in points else "box" for i in range(num_objects)]


def geometric_prompt(track: ObjectTrack, object_id: int, frame: int, kind: str) -> Prompt:
    """A point or box prompt from the object's mask on `frame`."""
    if frame not in track.masks or masks.area(track.masks[frame]) == 0:
        raise ValueError(f"object {object_id}: no visible mask on the key frame {frame} to derive a {kind} from")
    rle = track.masks[frame]
    if kind == "point":
        return Prompt("point", frame, object_id, coords=center_point(masks.decode(rle)))
    return Prompt("box", frame, object_id, coords=list(masks.to_box(rle)))


@register_source("pixelqa")
class PixelQA(VideoReferBench):
    """PixelQA samples, one per VideoRefer-Bench-Q question; the split is the prompt protocol."""

    splits = PROTOCOLS
    file = "VideoRefer-Bench-Q.json"
    task = "pixelqa"

    def key(self, item: int, video: str) -> str:
        """pixelqa-<index>-<video stem>."""
        return make_key("pixelqa", item, os.path.splitext(video)[0])

    def sample(self, root: Path, split: str, item: int) -> Sample:
        """One PixelQA sample."""
        e, where, regions, kf, frames, ids = self.load(root, item)
        objects = build_objects(regions, ids, frames.size, where)
        letters, texts = split_options(e.get("options", []), where)
        correct = _LETTER.match(str(e.get("Answer", "")).strip())
        if not correct or correct.group(1) not in letters:
            raise ValueError(f"{where}.Answer: got {e.get('Answer')!r}, expected one of the options' letters {letters}")
        key = self.key(item, str(e["video"]))
        question = str(e.get("Question", "")).strip()
        region_text(question, len(regions), with_ref=False, where=where)  # checks the markers early
        opts = "\n".join(f"({x}) {t}" for x, t in zip(letters, texts))
        # Pre-fill on the question with its options (as the reference protocol), then the MCQ with memory.
        prompts, turns, _ = memory_turns(
            f"{question}\nOptions:\n{opts}", correct.group(1), objects, key, where, prompt_frame=ids.index(kf)
        )
        kf_pos = ids.index(kf)
        kinds = dict(zip(sorted(objects), prompt_kinds(len(objects), split, key)))
        prompts = [geometric_prompt(objects[p.object_id], p.object_id, kf_pos, kinds[p.object_id]) for p in prompts]
        turns[2].text = mcq_text(region_text(question, len(regions), with_ref=False, where=where), letters, texts)
        return Sample(
            key=key,
            source=self.name,
            split=split,
            task=self.task,
            media=Media("video", frames.frames, frames.size, frames.ext, frames.fps, ids),
            objects=objects,
            prompts=prompts,
            turns=turns,
            answer=correct.group(1),
            choices=texts,
            meta={
                "question_type": e.get("type"),
                "key_frame": kf_pos,
                "video": str(e["video"]),
                "protocol": split,
                "prompt_kinds": [kinds[k] for k in sorted(kinds)],
                "answer_text": str(e.get("Answer")),
                "index": int(item),
            },
        )
