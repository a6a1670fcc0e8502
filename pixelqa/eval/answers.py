"""Reading a multiple-choice letter from generated text, as the official scripts do; never raises.

VideoRefer-Bench-Q / PixelQA / MVBench force the answer to start with "The best option is (" (or "Best Option: ("),
so the generated continuation starts with the letter: "B) the man", "B.", "b". The official scoring takes the first
whitespace token, strips '(', ')' and '.', lowercases it and keeps its first character. `parse_option` applies the
same rule to free text that repeats the forced prefix or wraps the letter ("(c)", "Best Option: (A)").
"""

from __future__ import annotations

import re

from pixelqa.eval.templates import MVBENCH_PREFIX, VIDEOREFER_PREFIX

_PREFIXES = tuple(p.rstrip("(").strip().lower() for p in (VIDEOREFER_PREFIX, MVBENCH_PREFIX)) + ("answer:",)


def first_character(text: object) -> str | None:
    """The official reading: first whitespace token, '(' ')' '.' stripped, lowercased, first character; None if
    nothing is left (an unparseable answer counts as wrong)."""
    if not isinstance(text, str):
        return None
    tokens = text.split()
    if not tokens:
        return None
    token = tokens[0].replace("(", "").replace(")", "").replace(".", "").lower()
    return token[0] if token else None


def parse_option(text: object, num_options: int) -> int | None:
    """The option index (0 = A) a generated answer names, or None when it names none of the `num_options`."""
    if not isinstance(text, str) or not isinstance(num_options, int) or num_options < 1:
        return None
    body = text.strip()
    lowered = body.lower()
    for prefix in _PREFIXES:  # free text that repeats the forced prefix
        if lowered.startswith(prefix):
            body = body[len(prefix) :].strip()
            break
    letter = first_character(body)
    if letter is None:
        return None
    index = ord(letter) - ord("a")
    return index if 0 <= index < num_options and re.fullmatch(r"[a-z]", letter) else None


def option_letter(index: int | None) -> str | None:
    """'A' for 0, ...; None stays None."""
    return None if index is None else chr(ord("A") + index)
