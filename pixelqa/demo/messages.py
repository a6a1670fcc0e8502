"""Messages shown on the page: the user's own words for their files, never a server path or an exception's guts."""

from __future__ import annotations

import re
import unicodedata

# what predict's messages start with: the CLI option, which means nothing on the page
_OPTION = re.compile(r"^--(media|point|box|mask|text): ")
_ABSOLUTE = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*")  # anything that looks like an absolute path
INTERNAL = "the server could not do this (an internal error, logged on the server); try again or reload the page"


def display_name(name: str | None, limit: int = 60) -> str:
    """A file name as the page may show it: the last path part, printable characters only, shortened."""
    base = re.split(r"[\\/]", name or "")[-1]
    clean = "".join(c for c in base if unicodedata.category(c)[0] not in "CZ" or c == " ").strip()
    clean = clean or "upload"
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def shown(value: object, limit: int = 60) -> str:
    """A request's value as a message may repeat it: its repr, shortened to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(value: object) -> str:
    """What a decoded JSON value is, in the page's words: a list, an object, a number, ..."""
    if value is None:
        return "null"
    kinds = {bool: "true/false", str: "a string", list: "a list", dict: "an object", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def user_message(exc: BaseException, replacements: dict[str, str]) -> str:
    """A user error's message for the page: each server path of `replacements` swapped for what the user knows.

    Anything still looking like an absolute path is cut out, so a decoder's message cannot leak the layout.
    """
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for path, shown in sorted(replacements.items(), key=lambda kv: -len(kv[0])):  # longest first: folder after file
        text = text.replace(repr(path), repr(shown)).replace(path, shown)
    text = _OPTION.sub(lambda m: {"media": "upload: "}.get(m.group(1), f"{m.group(1)}: "), text)
    return _ABSOLUTE.sub("(path)", text)
