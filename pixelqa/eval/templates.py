"""The fixed prompt templates of the official evaluation scripts, one per benchmark family.

The official scripts use the first template of each family (never a random one), so a benchmark's prompt is a
pure function of its query; `segmentation_prompt` picks the family as they do. MCQ benchmarks end the question
with an instruction and force the start of the answer (`*_PREFIX`); the model continues after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pixelqa.prompt_format import PREFILL_INSTRUCTION, seg_templates

MCQ_INSTRUCTION = "\nPlease only give the best option."
VIDEOREFER_PREFIX = "The best option is ("  # VideoRefer-Bench-Q and PixelQA
MVBENCH_PREFIX = "Best Option: ("
DESCRIBE_TEXT = "Please give a detailed description of the highlighted object {tag} in the video."
# The converters end MCQ questions with this instruction (pixelqa.data.sources.videorefer.mcq_text)
CONVERTER_MCQ_INSTRUCTION = "\nAnswer with the option's letter."

# max_new_tokens of the official scripts
MAX_NEW_TOKENS = {"seg": 512, "mcq": 256, "describe": 512}

TEMPLATE_NAMES: tuple[str, ...] = ("query", "sentence", "question", "description")


def segmentation_prompt(query: str, kind: str = "video", family: str | None = None) -> str:
    """The official segmentation prompt of `query` in an image or video.

    family None: 'sentence' when the query ends with '?', else 'query' (infer_seg.py's choice);
    'question' is GroundMoRe's, 'description' Ref-SAV's.
    """
    if kind not in ("image", "video"):
        raise ValueError(f"kind: got {kind!r}, expected 'image' or 'video'")
    q = " ".join(str(query).split())
    if not q:
        raise ValueError("query: got an empty expression, expected the text to segment")
    family = family or ("sentence" if q.endswith("?") else "query")
    if family not in TEMPLATE_NAMES:
        raise ValueError(f"family: got {family!r}, expected one of {TEMPLATE_NAMES}")
    # The training variants (shared with the converters); infer_seg.py's query prompt is the second variant
    # ("Please segment the {} in this ..."), the other families' their first. The query is not normalised here:
    # the scripts fill it in as it is.
    return seg_templates(family, kind)[1 if family == "query" else 0].format(q)


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """Question + "\\nOptions:\\n(A) ..." + the official instruction."""
    if not options:
        raise ValueError("options: got none, expected at least one answer option")
    lines = "\n".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options))
    return f"{question}\nOptions:\n{lines}{MCQ_INSTRUCTION}"


def official_mcq_text(converter_text: str) -> str:
    """A converter's MCQ user text with its trailing instruction replaced by the official one."""
    text = converter_text
    if text.endswith(CONVERTER_MCQ_INSTRUCTION):
        text = text[: -len(CONVERTER_MCQ_INSTRUCTION)]
    return text.rstrip() + MCQ_INSTRUCTION


def prefill_prompt(question_with_refs: str) -> str:
    """PixelQA pass 1: the question with `[k] <|ref|>` markers plus the released pre-fill instruction."""
    return f"{question_with_refs.strip()} {PREFILL_INSTRUCTION}"
