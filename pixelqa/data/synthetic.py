"""The embedded demo source: images and short videos of coloured shapes with every PixelQA task.

Each sample shows 2-3 shapes on a plain background; within a sample every shape has its own colour,
its own kind (circle / square / triangle), its own size class and (in videos) its own straight-line
motion, so any single attribute names one object unambiguously. Object ids start at 0, as the released memory text and
chat number objects. Answers are short. Everything is a
pure function of (seed, split, index): the same call always gives byte-identical samples.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from pixelqa.data import masks
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample, Turn, encode_frame, make_key
from pixelqa.prompt_format import PREFILL_TEMPLATES, REF, SEG, object_tag, prefill_answer, prefill_request

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CORNERS = {"circle": "no corners", "square": "four corners", "triangle": "three corners"}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SIZE_WORDS = ("small", "medium", "large")
NUMBER_WORDS = {1: "One", 2: "Two", 3: "Three"}
LETTERS = "ABCD"
# the attributes of a meta["shapes"] entry, each with its values (within a sample every shape differs in each)
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("colour", tuple(COLOURS)),
    ("kind", SHAPES),
    ("size", SIZE_WORDS),
)
BACKGROUND = (25, 25, 25)
# Lossless by default: tests read the drawn colours back exactly. `bench data --frame-ext jpg` sets "jpg" (quality 95,
# as real releases ship their frames) before building, for build workers to inherit.
FRAME_EXT = "png"

# The task of sample i is TASK_CYCLE[i % len(TASK_CYCLE)], so every task appears in any few dozen samples.
TASK_CYCLE: tuple[str, ...] = (
    "res",
    "rvos",
    "reasonseg",
    "reason_vos",
    "region_caption",
    "region_qa",
    "memory_qa",
    "video_qa",
    "image_qa",
    "mcq",
    "pixelqa",
    "caption",
    "rec",
)
VIDEO_TASKS = frozenset({"rvos", "reason_vos", "memory_qa", "video_qa", "pixelqa"})
SPLIT_SIZES: dict[str, int] = {"train": 2000, "val": 200}


@dataclass
class Shape:
    """One drawn object: attributes plus its centre on every frame."""

    object_id: int
    colour: str
    kind: str
    size_class: int  # index into SIZE_WORDS
    radius: int
    direction: str | None
    centres: list[tuple[float, float]]  # (x, y) per frame

    def describe(self, video: bool) -> str:
        """Referring expression, e.g. 'the red triangle moving left'."""
        text = f"the {self.colour} {self.kind}"
        return f"{text} moving {self.direction}" if video and self.direction else text


def attribute_indices(shape: dict) -> list[int]:
    """The index of a meta["shapes"] entry's colour, kind and size among their values (`ATTRIBUTES` order)."""
    return [values.index(shape[name]) for name, values in ATTRIBUTES]


def _draw(canvas: np.ndarray, shape: Shape, centre: tuple[float, float], colour: tuple[int, int, int]) -> None:
    """Draw one filled shape on an (H, W, 3) or (H, W) canvas in place."""
    x, y, r = round(centre[0]), round(centre[1]), shape.radius
    if shape.kind == "circle":
        cv2.circle(canvas, (x, y), r, colour, thickness=-1, lineType=cv2.LINE_8)
    elif shape.kind == "square":
        cv2.rectangle(canvas, (x - r, y - r), (x + r, y + r), colour, thickness=-1, lineType=cv2.LINE_8)
    else:
        pts = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], dtype=np.int32)
        cv2.fillPoly(canvas, [pts], colour, lineType=cv2.LINE_8)


def _place(rng: np.random.Generator, n_obj: int, n_frames: int, size: int, video: bool) -> list[Shape]:
    """Sample non-overlapping shapes (on every frame) with distinct colour, kind, size and direction."""
    colours = list(rng.permutation(list(COLOURS)))[:n_obj]
    kinds = list(rng.permutation(list(SHAPES)))[:n_obj]
    size_classes = list(rng.permutation(3))[:n_obj]
    dirs = list(rng.permutation(list(DIRECTIONS)))[:n_obj] if video else [None] * n_obj
    base = size / 112.0
    for _ in range(200 if n_obj <= 2 else 60):
        shapes = []
        for i in range(n_obj):
            radius = round(float(6 + 4 * size_classes[i] + rng.integers(0, 2)) * base)
            speed = float(rng.uniform(2.0, 3.5)) * base if video else 0.0
            dx, dy = DIRECTIONS[dirs[i]] if dirs[i] else (0, 0)
            travel = speed * (n_frames - 1)
            lo_x = radius + 1 + (travel if dx < 0 else 0)
            hi_x = size - radius - 2 - (travel if dx > 0 else 0)
            lo_y = radius + 1 + (travel if dy < 0 else 0)
            hi_y = size - radius - 2 - (travel if dy > 0 else 0)
            x0, y0 = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
            centres = [(x0 + dx * speed * t, y0 + dy * speed * t) for t in range(n_frames)]
            shapes.append(Shape(i, str(colours[i]), str(kinds[i]), int(size_classes[i]), radius, dirs[i], centres))
        if _separated(shapes, n_frames):
            return shapes
    if n_obj > 2:  # deterministic fallback: fewer shapes fit more easily
        return _place(rng, n_obj - 1, n_frames, size, video)
    raise RuntimeError("could not place 2 non-overlapping shapes in 200 tries; use a larger image size")


def _separated(shapes: list[Shape], n_frames: int) -> bool:
    """True when no two shapes' bounding circles come closer than 3 px on any frame."""
    for t in range(n_frames):
        for i in range(len(shapes)):
            for j in range(i + 1, len(shapes)):
                (xa, ya), (xb, yb) = shapes[i].centres[t], shapes[j].centres[t]
                reach = 1.45 * (shapes[i].radius + shapes[j].radius) + 3
                if (xa - xb) ** 2 + (ya - yb) ** 2 < reach**2:
                    return False
    return True


def _render(shapes: list[Shape], n_frames: int, size: int) -> tuple[list[bytes], dict[int, ObjectTrack]]:
    """Frames encoded as FRAME_EXT, and per-object RLE tracks."""
    frames: list[bytes] = []
    tracks = {s.object_id: ObjectTrack(category=s.kind, caption=f"a {s.colour} {s.kind}") for s in shapes}
    for t in range(n_frames):
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = BACKGROUND
        labels = np.zeros((size, size), dtype=np.uint8)
        for s in shapes:
            _draw(canvas, s, s.centres[t], COLOURS[s.colour])
            _draw(labels, s, s.centres[t], (s.object_id + 1,))  # label 0 is the background
        frames.append(encode_frame(canvas, ext=FRAME_EXT))
        for s in shapes:
            tracks[s.object_id].masks[t] = masks.encode(labels == s.object_id + 1)
    return frames, tracks


def _visual_prompt(rng: np.random.Generator, track: ObjectTrack, object_id: int, n_frames: int) -> Prompt:
    """A point (centre of mass), tight box or mask prompt of an object on a random frame."""
    frame = int(rng.integers(0, n_frames))
    rle = track.masks[frame]
    kind = ("point", "box", "mask")[int(rng.integers(0, 3))]
    if kind == "mask":
        return Prompt("mask", frame, object_id, rle=rle)
    if kind == "box":
        x1, y1, x2, y2 = masks.to_box(rle)
        return Prompt("box", frame, object_id, coords=[x1, y1, x2, y2])
    ys, xs = np.nonzero(masks.decode(rle))
    # The pixel nearest to the centre of mass is inside the mask even for concave shapes.
    cy, cx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return Prompt("point", frame, object_id, coords=[float(xs[k]) + 0.5, float(ys[k]) + 0.5])


def _seg_turns(question: str, ids: list[int]) -> list[Turn]:
    """A user question and an answer that segments `ids`."""
    answer = f"It is {SEG}." if len(ids) == 1 else prefill_answer(ids)
    return [Turn("user", question), Turn("assistant", answer, seg_objects=list(ids))]


def _memory_turns(rng: np.random.Generator, question: str, ids: list[int], answer: str) -> list[Turn]:
    """Pre-fill turn then `question` answered with the objects' memory, as the released data and chat build them.

    The pre-fill request is the question itself with `[k] <|ref|>` at each object's tag (prompt order = `ids`
    order = order of the tags in the question), in one of the released pre-fill templates; it answers
    `[k] <|seg|> ...`. `pixelqa.model.chat` pre-fills a question the same way at inference.
    """
    with_ref = question
    for k in ids:
        tag = object_tag(k)
        if with_ref.count(tag) != 1:
            raise ValueError(f"question: got {question!r}, expected the tag {tag} exactly once")
        with_ref = with_ref.replace(tag, f"{tag} {REF}")
    template = int(rng.integers(0, len(PREFILL_TEMPLATES)))
    return [
        Turn("user", prefill_request(with_ref, template)),
        Turn("assistant", prefill_answer(ids), seg_objects=list(ids)),
        Turn("user", question, memory_objects=list(ids)),
        Turn("assistant", answer),
    ]


def _conversation(
    task: str, rng: np.random.Generator, shapes: list[Shape], tracks: dict[int, ObjectTrack], n_frames: int
) -> tuple[list[Prompt], list[Turn], str | None, list[str] | None, dict]:
    """Prompts, turns, answer, choices and meta of one task on the drawn shapes."""
    video = n_frames > 1
    target = shapes[int(rng.integers(0, len(shapes)))]
    meta: dict = {"question_type": task, "target": target.object_id}
    if task in ("res", "rvos", "rec"):
        expr = target.describe(video)
        meta["expression"] = expr
        return [], _seg_turns(f"Please segment {expr}.", [target.object_id]), None, None, meta
    if task in ("reasonseg", "reason_vos"):
        options = [("corners", f"Which shape has {CORNERS[target.kind]}? Please segment it.")]
        largest = max(shapes, key=lambda s: s.size_class)
        smallest = min(shapes, key=lambda s: s.size_class)
        if target is largest:
            options.append(("largest", "Which shape is the largest? Please segment it."))
        if target is smallest:
            options.append(("smallest", "Which shape is the smallest? Please segment it."))
        if video:
            axis = "horizontally" if target.direction in ("left", "right") else "vertically"
            if sum(1 for s in shapes if (s.direction in ("left", "right")) == (axis == "horizontally")) == 1:
                options.append(("axis", f"Which shape travels {axis}? Please segment it."))
            towards = {"left": "the left edge", "right": "the right edge", "up": "the top", "down": "the bottom"}
            options.append(
                ("towards", f"Which shape is heading towards {towards[target.direction]}? Please segment it.")
            )
        qtype, question = options[int(rng.integers(0, len(options)))]
        meta["question_type"] = qtype
        return [], _seg_turns(question, [target.object_id]), None, None, meta
    if task == "pixelqa":
        target = shapes[0]  # the prompted object is [0]
        meta["target"] = target.object_id
    prompt = _visual_prompt(rng, tracks[target.object_id], target.object_id, n_frames)
    if task == "region_caption":
        answer = f"A {target.colour} {target.kind}" + (f" moving {target.direction}." if video else ".")
        return [prompt], [Turn("user", f"Describe {REF} briefly."), Turn("assistant", answer)], answer, None, meta
    if task == "region_qa":
        asks = [
            ("colour", f"What colour is {REF}?", target.colour.capitalize() + "."),
            ("shape", f"What shape is {REF}?", target.kind.capitalize() + "."),
        ]
        if video:
            asks.append(("direction", f"Which direction does {REF} move?", target.direction.capitalize() + "."))
        qtype, q, a = asks[int(rng.integers(0, len(asks)))]
        meta["question_type"] = qtype
        return [prompt], [Turn("user", q), Turn("assistant", a)], a, None, meta
    if task == "memory_qa":
        # A question about two objects answered with their memory. Half the samples ask it as a first turn over
        # ground-truth memory (the released region data's form, and the form of the two-pass protocol's answer
        # pass); the other half pre-fill both objects from visual prompts first, then ask it (mask pre-filling).
        # Ids 0, 1 in prompt order; attributes are random.
        a, b = shapes[0], shapes[1]
        bigger = a if a.size_class > b.size_class else b
        question = f"Which is larger, {object_tag(a.object_id)} or {object_tag(b.object_id)}?"
        answer = f"{object_tag(bigger.object_id)}."
        meta.update(question_type="larger", target=bigger.object_id)
        if rng.integers(0, 2):
            turns = [Turn("user", question, memory_objects=[a.object_id, b.object_id]), Turn("assistant", answer)]
            return [], turns, answer, None, meta
        prompts = [_visual_prompt(rng, tracks[s.object_id], s.object_id, n_frames) for s in (a, b)]
        return prompts, _memory_turns(rng, question, [a.object_id, b.object_id], answer), answer, None, meta
    if task in ("video_qa", "image_qa"):
        asks = [("count", "How many shapes are there?", f"{NUMBER_WORDS[len(shapes)]}.")]
        if video:
            asks.append(
                (
                    "direction",
                    f"Which direction does the {target.colour} {target.kind} move?",
                    target.direction.capitalize() + ".",
                )
            )
        asks.append(("colour", f"What colour is the {target.kind}?", target.colour.capitalize() + "."))
        qtype, q, ans = asks[int(rng.integers(0, len(asks)))]
        meta["question_type"] = qtype
        return [], [Turn("user", q), Turn("assistant", ans)], ans, None, meta
    if task in ("mcq", "pixelqa"):
        choices = [c for c in rng.permutation(list(COLOURS))]
        correct = LETTERS[choices.index(target.colour)]
        opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
        meta.update(question_type="colour", correct=correct)
        if task == "mcq":
            q = f"What colour is the {target.kind}? Options: {opts}. Answer with the option's letter."
            return [], [Turn("user", q), Turn("assistant", correct)], correct, [str(c) for c in choices], meta
        q = f"What colour is {object_tag(target.object_id)}? Options: {opts}. Answer with the option's letter."
        turns = _memory_turns(rng, q, [target.object_id], correct)
        return [prompt], turns, correct, [str(c) for c in choices], meta
    if task == "caption":
        parts = [f"a {s.colour} {s.kind}" for s in shapes]
        answer = ("There is " if len(parts) == 1 else "There are ") + ", ".join(parts[:-1]) + f" and {parts[-1]}."
        return [], [Turn("user", "Describe the image briefly."), Turn("assistant", answer)], answer, None, meta
    raise ValueError(f"task: got {task!r}, expected one of {TASK_CYCLE}")


def make_sample(index: int, split: str = "train", seed: int = 0, size: int = 112, task: str | None = None) -> Sample:
    """Synthetic sample number `index` of `split`: a pure function of its arguments."""
    if index < 0:
        raise ValueError(f"index: got {index}, expected >= 0")
    if size < 64:
        raise ValueError(f"size: got {size}, expected >= 64 pixels")
    task = task or TASK_CYCLE[index % len(TASK_CYCLE)]
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    video = task in VIDEO_TASKS or (task in ("region_caption", "region_qa") and index % 2 == 1)
    n_frames = int(rng.integers(4, 9)) if video else 1
    n_obj = int(rng.integers(2, 4))
    shapes = _place(rng, n_obj, n_frames, size, video)
    frames, tracks = _render(shapes, n_frames, size)
    prompts, turns, answer, choices, meta = _conversation(task, rng, shapes, tracks, n_frames)
    meta["shapes"] = [
        {
            "id": s.object_id,
            "colour": s.colour,
            "kind": s.kind,
            "size": SIZE_WORDS[s.size_class],
            "direction": s.direction,
        }
        for s in shapes
    ]
    return Sample(
        key=make_key("synthetic", split, f"{index:07d}"),
        source="synthetic",
        split=split,
        task=task,
        media=Media(
            kind="video" if video else "image",
            frames=frames,
            size=(size, size),
            ext=FRAME_EXT,
            fps=4.0 if video else None,
            frame_ids=list(range(n_frames)) if video else None,
        ),
        objects=tracks,
        prompts=prompts,
        turns=turns,
        answer=answer,
        choices=choices,
        meta=meta,
    )
