"""Reading a multiple-choice letter from generated text, as the official scripts do; never raises.

VideoRefer-Bench-Q / PixelQA / MVBench force the answer to start with "The best option is (" (or "Best Option: ("),
so the generated continuation starts with the letter: "B) the man", "B.", "b". The official scoring
(`eval_general.check_ans`) lowercases the response, takes its text up to the first space (`split(' ')[0]`), strips
'(', ')' and '.' and keeps the first character: `first_character`, the default of `parse_option`. So a continuation
that repeats the prefix is read by its first word ("Answer: B" -> 'a', "The best option is (D)" -> 't').
`parse_option(..., lenient=True)` (the protocols' `lenient_mcq` switch, docs/departures.md) first drops a leading
"The best option is", "Best Option:" or "Answer:" and reads the first whitespace token, for free text.
"""

from __future__ import annotations

import re

from pixelqa.eval.templates import MVBENCH_PREFIX, VIDEOREFER_PREFIX

_LENIENT_PREFIXES = tuple(p.rstrip("(").strip().lower() for p in (VIDEOREFER_PREFIX, MVBENCH_PREFIX)) + ("answer:",)


def _letter(token: str) -> str | None:
    """'(' ')' '.' removed, lowercased, first character; None when nothing is left."""
    token = token.replace("(", "").replace(")", "").replace(".", "").lower()
    return token[0] if token else None


def first_character(text: object) -> str | None:
    """The official reading: the text up to its first space, '(' ')' '.' stripped, lowercased, first character; None
    if nothing is left (the official script stops there with an IndexError; here it counts as wrong)."""
    if not isinstance(text, str):
        return None
    # split(' '), not split(): as released, a leading space leaves an empty token and a newline does not end one
    return _letter(text.split(" ")[0])


def lenient_character(text: object) -> str | None:
    """The lenient reading: a leading forced prefix or 'Answer:' dropped, then the first whitespace token's letter."""
    if not isinstance(text, str):
        return None
    body = text.strip()
    lowered = body.lower()
    for prefix in _LENIENT_PREFIXES:  # free text that repeats the forced prefix
        if lowered.startswith(prefix):
            body = body[len(prefix) :].strip()
            break
    tokens = body.split()
    return _letter(tokens[0]) if tokens else None


def parse_option(text: object, num_options: int, lenient: bool = False) -> int | None:
    """The option index (0 = A) a generated answer names by the official reading (or the lenient one), or None when
    it names none of the `num_options`."""
    if not isinstance(text, str) or not isinstance(num_options, int) or num_options < 1:
        return None
    letter = lenient_character(text) if lenient else first_character(text)
    if letter is None or not re.fullmatch(r"[a-z]", letter):
        return None
    index = ord(letter) - ord("a")
    return index if index < num_options else None


def option_letter(index: int | None) -> str | None:
    """'A' for 0, ...; None stays None."""
    return None if index is None else chr(ord("A") + index)
