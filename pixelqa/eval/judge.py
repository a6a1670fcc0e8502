"""VideoRefer-Bench-D's judge: four 0-5 scores per description (Subject correspondence, Appearance, Temporal,
Hallucination), read from the judge's reply with a regular expression and averaged per dimension; All = their mean.

The evaluation itself writes the judge's input (`judge_input.json`: video, index, reference caption, prediction)
and reports the score as pending. Two ways to score it, the judge model recorded with the scores either way:
- `ask_judge` / `python -m pixelqa.eval.judge JUDGE_INPUT --url URL --model NAME`: sends each record to an
  OpenAI-compatible chat-completions endpoint the user names (the release judged with gpt-4o-mini at temperature
  0.7, top-p 0.95, up to 800 tokens, 5 tries), writes the replies next to the input and scores them;
- `score_file`: scores replies the user obtained some other way (a JSON list, one reply per record).
Only `ask_judge` opens a connection, and only to the URL given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
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


# Our wording of the judging task (the four dimensions and the reply format parse_scores reads).
JUDGE_SYSTEM = (
    "You rate a model's description of one highlighted object in a video against a reference description. "
    "Give four integer scores from 0 (worst) to 5 (best): Subject Correspondence (is it the same object and "
    "category), Appearance Description (colour, shape, clothing, details), Temporal Description (actions and how "
    "they change over time), Hallucination Detection (5 = nothing invented). Reply exactly in the form "
    "'Subject Correspondence: N, Appearance Description: N, Temporal Description: N, Hallucination Detection: N'."
)
RELEASED_SETTINGS = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 800}


def judge_messages(record: dict) -> list[dict[str, str]]:
    """The chat messages that ask the judge about one record (reference caption vs prediction)."""
    user = f"Reference description: {record.get('caption', '')}\nModel description: {record.get('prediction', '')}"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def ask_judge(
    records: Sequence[dict],
    url: str,
    model: str,
    api_key: str | None = None,
    tries: int = 5,
    timeout: float = 60.0,
    backoff: float = 2.0,
) -> list[str | None]:
    """One reply per record from an OpenAI-compatible chat-completions endpoint (None after `tries` failures)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    replies: list[str | None] = []
    for record in records:
        body = json.dumps({"model": model, "messages": judge_messages(record), **RELEASED_SETTINGS}).encode()
        reply = None
        for attempt in range(tries):
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    reply = json.loads(resp.read())["choices"][0]["message"]["content"]
                if parse_scores(reply) is not None:
                    break
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError):
                reply = None
            if attempt + 1 < tries:
                time.sleep(backoff * (attempt + 1))
        replies.append(reply)
    return replies


def main(argv: list[str] | None = None) -> int:
    """CLI: ask a judge endpoint about a judge_input.json, write replies.json and scores.json beside it."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.eval.judge", description="Score VideoRefer-Bench-D")
    ap.add_argument("judge_input", help="judge_input.json written by the evaluation")
    ap.add_argument("--url", required=True, help="OpenAI-compatible chat-completions URL")
    ap.add_argument("--model", required=True, help="judge model name (recorded with the scores)")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    ap.add_argument("--tries", type=int, default=5)
    args = ap.parse_args(argv)
    path = Path(args.judge_input)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: judge_input: {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(records, list):
        print(f"error: judge_input: {path}: expected a JSON list of records", file=sys.stderr)
        return 2
    replies = ask_judge(records, args.url, args.model, os.environ.get(args.api_key_env), args.tries)
    (path.parent / "replies.json").write_text(json.dumps(replies, indent=1))
    scores = {"judge": args.model, **aggregate(replies)}
    (path.parent / "scores.json").write_text(json.dumps(scores, indent=1))
    for key, value in scores.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
