"""The text protocol shared by data and model: special tokens, object ids, frame tags, memory prompts.

Both `pixelqa.data` (building training text) and `pixelqa.model` (chat-time rewriting) use these
functions, so the two sides can never drift apart. This module imports nothing from either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# The released UniPixel token strings (the paper writes <REF>, <MEM>, <SEG>); released ids 151665..151667.
REF = "<|ref|>"  # placeholder for one visual prompt (point / box / mask) in the user text
SEG = "<|seg|>"  # emitted by the model; the state that predicts it is decoded into a mask
MEM = "<|mem|>"  # placeholder for one object-memory feature (one object on one pair of frames)
RELEASED_TOKEN_IDS = {REF: 151665, SEG: 151666, MEM: 151667}
# The memory pre-filling templates of the released training data ({} = the question with its `[k] <|ref|>`);
# PixelQA inference uses the first one.
PREFILL_TEMPLATES: tuple[str, ...] = (
    "{} Please localize the relevant objects with IDs.",
    "{} Segment all the relevant target(s) with ID(s) in the video.",
    "{} Can you segment the target object(s) with ID(s) in the video?",
    "Please segment the mentioned objects with IDs in the question: {}",
    "Find and track the relevant objects with IDs in the query: {}",
    "Given the query '{}', please provide segmentation masks for the relevant objects with IDs.",
)
PREFILL_INSTRUCTION = "Please localize the relevant objects with IDs."  # the first template's instruction
# Qwen2.5's default system prompt, which the released model was trained and evaluated with.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
SPECIAL_TOKENS: tuple[str, ...] = (REF, SEG, MEM)  # added in this order: the released ids' order

_OBJECT_ID = re.compile(r"\[(\d+)\]")
_PREFILL = re.compile(r"\[(\d+)\]\s*" + re.escape(SEG))
_PAIR_MEM = re.compile(r"<(\d+)>-<(\d+)>\s*" + re.escape(MEM))


def object_tag(object_id: int) -> str:
    """Text tag of an object in the memory bank, e.g. ``[3]`` (ids start at 0, as in the released data)."""
    if object_id < 0:
        raise ValueError(f"object_id: got {object_id}, expected an integer >= 0")
    return f"[{object_id}]"


def frame_tag(frame: int) -> str:
    """Text tag of a frame (0-based index in, 1-based tag out), e.g. frame 0 -> ``<1>``."""
    if frame < 0:
        raise ValueError(f"frame: got {frame}, expected an index >= 0")
    return f"<{frame + 1}>"


def prefill_answer(object_ids: Sequence[int]) -> str:
    """The memory pre-filling answer as the released model was trained: ``[0] <|seg|> [1] <|seg|>``."""
    if not object_ids:
        return "There are no relevant regions for this question."
    return " ".join(f"{object_tag(i)} {SEG}" for i in object_ids)


def parse_prefill(text: str) -> list[int]:
    """Object ids of a pre-filling answer, in the order of their <SEG> tokens."""
    return [int(m.group(1)) for m in _PREFILL.finditer(text)]


def prefill_request(question: str, template: int = 0) -> str:
    """The pre-fill user text: `question` (with its `[k] <|ref|>`) in one of the released templates."""
    if not 0 <= template < len(PREFILL_TEMPLATES):
        raise ValueError(f"template: got {template}, expected 0 <= template < {len(PREFILL_TEMPLATES)}")
    return PREFILL_TEMPLATES[template].format(question)


def count_seg(text: str) -> int:
    """Number of <SEG> tokens in a text."""
    return text.count(SEG)


def count_ref(text: str) -> int:
    """Number of <REF> tokens in a text."""
    return text.count(REF)


def frame_pairs(frames: Sequence[int]) -> list[int]:
    """Frame-pair indices (frame // 2) of frames, sorted and unique: one <|mem|> per visible pair."""
    return sorted({f // 2 for f in frames})


def pair_frames(pair: int, num_frames: int) -> tuple[int, ...]:
    """The frames of pair `pair` ((2g, 2g + 1); an odd clip's last pair repeats its last frame, as Qwen pads)."""
    return tuple(f for f in (2 * pair, 2 * pair + 1) if f < num_frames) or (num_frames - 1,)


def memory_prompt(visible_frames: Mapping[int, Sequence[int]], num_frames: int, kind: str = "video") -> str:
    """The memory-injection preamble as released: one line per object, one <|mem|> per visible frame pair.

    Video: ``Here is a video with N frames denoted as <1> to <N>. ...`` then ``[k]: <1>-<2> <|mem|> <3>-<4> <|mem|>``
    (1-based tags, pairs where the object's mask is non-empty). Image: ``[k]: <|mem|>``. ``visible_frames`` maps
    object id -> 0-based frames with a non-empty mask; an object visible on no frame gets no line.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: got {num_frames}, expected >= 1")
    if kind == "video":
        lines = [
            f"Here is a video with {num_frames} frames denoted as {frame_tag(0)} to {frame_tag(num_frames - 1)}. "
            "The highlighted regions are as follows:"
        ]
    else:
        lines = ["Here is an image with the following highlighted regions:"]
    for obj_id in sorted(visible_frames):
        frames = sorted(set(visible_frames[obj_id]))
        for f in frames:
            if not 0 <= f < num_frames:
                raise ValueError(f"visible_frames[{obj_id}]: frame {f} outside [0, {num_frames - 1}]")
        if not frames:
            continue
        if kind == "video":
            body = " ".join(f"<{2 * g + 1}>-<{2 * g + 2}> {MEM}" for g in frame_pairs(frames))
        else:
            body = MEM
        lines.append(f"{object_tag(obj_id)}: {body}")
    return "\n".join(lines)


def parse_memory_prompt(text: str) -> list[tuple[int, int]]:
    """(object id, first frame of its pair, 0-based) of every <|mem|> in a memory preamble, in text order.

    Image preambles (``[k]: <|mem|>``) give frame 0.
    """
    refs: list[tuple[int, int]] = []
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^\[(\d+)\]:(.*)$", line)
        if not m or MEM not in m.group(2):
            continue
        obj_id, body = int(m.group(1)), m.group(2)
        paired = _PAIR_MEM.findall(body)
        if paired:
            refs.extend((obj_id, int(a) - 1) for a, _ in paired)
        else:
            refs.extend((obj_id, 0) for _ in range(body.count(MEM)))
    if len(refs) != text.count(MEM):
        raise ValueError(
            f"text has {text.count(MEM)} {MEM} tokens but only {len(refs)} sit in '[k]: <a>-<b> {MEM}' lines"
        )
    return refs


def object_ids_in(text: str) -> list[int]:
    """All object ids named as ``[k]`` in a text, in order of first mention."""
    seen: list[int] = []
    for m in _OBJECT_ID.finditer(text):
        k = int(m.group(1))
        if k not in seen:
            seen.append(k)
    return seen


# ------------------------------------------------------------------------ segmentation instruction templates
# The released training instructions (`segmentation.py`); `{}` = the query or text. Training draws one variant
# per sample; the official evaluation scripts always use the first of each family, so both sides read these.
SEG_QUERY_TEMPLATES: dict[str, tuple[str, ...]] = {
    kind: (
        f"Can you segment the {{}} in this {kind}?",
        f"Please segment the {{}} in this {kind}.",
        f"Can you find the {{}} in the {kind}?",
        f"Segment the {{}} in the {kind}.",
        f"Track the {{}} in this {kind}.",
        f"Where is the {{}} in this {kind}? Please respond with the segmentation mask.",
        "What is the {}? Please output the segmentation mask.",
    )
    for kind in ("video", "image")
}
SEG_SENTENCE_TEMPLATES: tuple[str, ...] = (
    "{} Please provide the segmentation mask.",
    "{} Please respond with the segmentation mask.",
    "{} Output the segmentation mask.",
    "{} Give me the segmentation results directly.",
    "{} Segment the target directly.",
)
SEG_EXPLANATORY_TEMPLATES: tuple[str, ...] = (
    "{} Please provide the segmentation mask and explain why.",
    "{} Respond with the segmentation mask and explain the reason.",
    "{} Output the segmentation mask and give some explanations.",
    "{} Provide the segmentation mask while answering the question.",
    "{} Segment the relevant target and answer the question.",
)
SEG_QUESTION_TEMPLATES: tuple[str, ...] = (
    "{} Please answer the question and provide the segmentation mask.",
    "{} Please associate your answer with the segmentation mask.",
    "{} Answer the question and provide the corresponding segmentation mask.",
    "{} Give me the answer and segment the target.",
    "{} Provide a short answer while segmenting the relevant object.",
)
SEG_DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "Please segment the object according to the description: {}",
    "Segment the target according to the description: {}",
    "Analyze the following sentences and provide the corresponding segmentation mask: {}",
    "Given the description: {} Where is the described object in this video?",
    "Find the object according to the description: {}",
)
# Answers of the query, sentence and description families (explanatory: one of these + " " + the explanation;
# question: "{answer} <|seg|>.").
SEG_RESPONSES: tuple[str, ...] = (
    f"The target is {SEG}.",
    f"The segmentation result is {SEG}.",
    f"Sure, the segmentation mask is {SEG}.",
    f"Sure, it is {SEG}.",
    f"{SEG}.",
)
SEG_FAMILIES: tuple[str, ...] = ("query", "sentence", "explanatory", "question", "description")


def seg_templates(family: str, kind: str = "video") -> tuple[str, ...]:
    """The released instruction variants of a segmentation family ('query' differs for an image and a video)."""
    if kind not in ("image", "video"):
        raise ValueError(f"kind: got {kind!r}, expected 'image' or 'video'")
    table = {
        "query": SEG_QUERY_TEMPLATES[kind],
        "sentence": SEG_SENTENCE_TEMPLATES,
        "explanatory": SEG_EXPLANATORY_TEMPLATES,
        "question": SEG_QUESTION_TEMPLATES,
        "description": SEG_DESCRIPTION_TEMPLATES,
    }
    if family not in table:
        raise ValueError(f"family: got {family!r}, expected one of {SEG_FAMILIES}")
    return table[family]


def normalize_query(query: str) -> str:
    """A query as the released training data fills it in: no trailing '.', first character lowercased, a leading
    'the ' / 'an ' / 'a ' removed (the templates already say "the {}")."""
    q = " ".join(query.split()).rstrip(".")
    q = q[:1].lower() + q[1:]
    for article in ("the ", "an ", "a "):
        if q.startswith(article):
            return q[len(article) :]
    return q


def seg_instruction(text: str, family: str, variant: int, kind: str = "video") -> str:
    """Variant `variant` (taken modulo the family's size) of a family's instruction, filled with `text`; queries
    are normalised, other families take the text as it is (whitespace collapsed)."""
    templates = seg_templates(family, kind)
    body = normalize_query(text) if family == "query" else " ".join(text.split())
    return templates[variant % len(templates)].format(body)
