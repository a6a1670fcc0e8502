"""Instruction and answer wording for the image-source converters, chosen deterministically per sample.

The choice hashes the sample key and turn index (CRC-32), so a rebuilt shard is byte-identical and the
wording still varies across samples. The raw expressions always go into `meta` as well, so later code can
re-phrase them. Segmentation groups (all expressions of one image) become one sample whose turn pairs
are independent of each other (`meta["independent_turns"] = True`); a crowded image keeps all of them in one
sample, as the released data does (collate picks a few pairs per visit).
This module registers no source (its name starts with '_').
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from pixelqa.data.schema import Turn
from pixelqa.prompt_format import (
    SEG_EXPLANATORY_TEMPLATES,
    SEG_QUERY_TEMPLATES,
    SEG_RESPONSES,
    SEG_SENTENCE_TEMPLATES,
    normalize_query,
)

# The released segmentation templates (image forms): queries for a noun phrase (class name, part name, short
# referring expression), sentences for ReasonSeg's long queries, explanatory for its explanation samples.
PHRASE_QUERIES: tuple[str, ...] = SEG_QUERY_TEMPLATES["image"]
SENTENCE_QUERIES: tuple[str, ...] = SEG_SENTENCE_TEMPLATES
EXPLAIN_QUERIES: tuple[str, ...] = SEG_EXPLANATORY_TEMPLATES
SEG_ANSWERS: tuple[str, ...] = SEG_RESPONSES

# detailed description of one region; {} is an object tag like [2]. Our own list: the reference lists only one of
# the release's 30 paraphrases (docs/departures.md).
DESCRIBE_REGION: tuple[str, ...] = (
    "Please describe {} in detail.",
    "Give a detailed description of the region {}.",
    "What can you tell me about {}? Describe it thoroughly.",
    "Describe everything you can see in the region {}.",
    "Write a detailed account of {} in this image.",
)


def choose(options: Sequence[str], *parts: Any) -> str:
    """One of `options`, picked by a stable hash of `parts` (same parts -> same choice, on every machine)."""
    if not options:
        raise ValueError("options: got an empty sequence, expected at least one template")
    h = zlib.crc32("|".join(str(p) for p in parts).encode("utf-8"))
    return options[h % len(options)]


def phrase_query(phrase: str, *parts: Any) -> str:
    """A segmentation request for a noun phrase, normalised as the release does (`normalize_query`)."""
    return choose(PHRASE_QUERIES, "phrase", *parts).format(normalize_query(phrase))


def sentence_query(sentence: str, *parts: Any) -> str:
    """A segmentation request for a full sentence or question."""
    return choose(SENTENCE_QUERIES, "sentence", *parts).format(" ".join(sentence.split()))


def explain_query(sentence: str, *parts: Any) -> str:
    """A segmentation request that also asks for the reason."""
    return choose(EXPLAIN_QUERIES, "explain", *parts).format(" ".join(sentence.split()))


def seg_answer(*parts: Any) -> str:
    """An assistant answer holding exactly one <|seg|>."""
    return choose(SEG_ANSWERS, "answer", *parts)


def describe_region(tag: str, *parts: Any) -> str:
    """A request for a detailed description of the region tagged `tag` (e.g. "[2]")."""
    return choose(DESCRIBE_REGION, "describe", *parts).format(tag)


def seg_turns(queries: Sequence[tuple[str, int]], key: str, sentence: bool = False) -> list[Turn]:
    """User/assistant turn pairs, one per (text, object id): the request, then one <|seg|> for that object."""
    turns: list[Turn] = []
    for i, (text, oid) in enumerate(queries):
        ask = sentence_query(text, key, i) if sentence else phrase_query(text, key, i)
        turns.append(Turn("user", ask))
        turns.append(Turn("assistant", seg_answer(key, i), seg_objects=[oid]))
    return turns
