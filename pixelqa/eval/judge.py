"""VideoRefer-Bench-D's judge: four 0-5 scores per description (Subject correspondence, Appearance, Temporal,
Hallucination), read from the judge's reply with a regular expression and averaged per dimension; All = their mean.

The evaluation itself writes the judge's input (`judge_input.json`: video, index, reference caption, prediction)
and reports the score as pending; `score_file` scores such a file from replies the user obtained from their judge
(one reply per record, `replies.json`), so the judge model stays a user's choice, recorded with the scores.
Nothing here opens a network connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DIMENSIONS: tuple[str, ...] = ("SC", "AD", "TD", "HD")
_NAMES = {
    "SC": r"subject\s+correspondence",
    "AD": r"appearance(?:\s+description)?",
    "TD": r"temporal(?:\s+description)?",
    "HD": r"hallucination(?:\s+detection)?",
}


def parse_scores(reply: object) -> dict[str, float] | None:
    """The four scores of one judge reply ("Subject Correspondence: 4" ...), or None when any is missing."""
    if not isinstance(reply, str):
        return None
    out: dict[str, float] = {}
    for key, name in _NAMES.items():
        m = re.search(rf"(?:{name}|\b{key}\b)\s*[:=\-]?\s*\**\s*([0-5](?:\.\d+)?)", reply, flags=re.IGNORECASE)
        if m is None:
            return None
        out[key] = float(m.group(1))
    return out


def aggregate(replies: Sequence[object]) -> dict[str, Any]:
    """Per-dimension means over the parsable replies, All = the mean of the four, and the count left out."""
    scores = [s for s in (parse_scores(r) for r in replies) if s is not None]
    row: dict[str, Any] = {"judged": len(scores), "unparsed": len(replies) - len(scores)}
    if scores:
        for key in DIMENSIONS:
            row[key] = sum(s[key] for s in scores) / len(scores)
        row["All"] = sum(row[k] for k in DIMENSIONS) / len(DIMENSIONS)
    return row


def score_file(judge_input: str | Path, replies: str | Path, judge_model: str) -> dict[str, Any]:
    """Scores of a benchmark's judge input from the user's replies file (a JSON list, one reply per record)."""
    records = json.loads(Path(judge_input).read_text())
    answers = json.loads(Path(replies).read_text())
    if not isinstance(answers, list) or len(answers) != len(records):
        n = len(answers) if isinstance(answers, list) else type(answers).__name__
        raise ValueError(f"{replies}: got {n} replies, expected a JSON list of {len(records)} (one per record)")
    return {"judge": judge_model, **aggregate(answers)}
