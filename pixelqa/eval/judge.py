"""VideoRefer-Bench-D's judge: four 0-5 scores per description (Subject correspondence, Appearance, Temporal,
Hallucination), read from the judge's reply with a regular expression and averaged per dimension; All = their mean.

The evaluation itself writes the judge's input (`judge_input.json`: video, index, caption = the reference
description, pred = the model's) and reports the score as pending. Two ways to score it, the judge model recorded
with the scores either way:
- `ask_judge` / `python -m pixelqa.eval.judge JUDGE_INPUT --url URL --model NAME`: sends each record to an
  OpenAI-compatible chat-completions endpoint the user names (the full URL, `.../v1/chat/completions`; the key from
  $OPENAI_API_KEY or the variable `--api-key-env` names), as the release judged (gpt-4o-mini at temperature 0.7,
  top-p 0.95, up to 800 tokens, 5 tries), writes the replies next to the input and scores them. A request that
  fails is counted and reported (`JudgeReplies.failures`: the HTTP status or error and the URL), never scored as a
  reply; a failure before any reply that every record would meet (HTTP 401/403/404, an unreachable or malformed
  URL, a server down after every try) stops the run, while one of the record itself (HTTP 400/413/422: too long,
  a content refusal) is counted against that record and the run goes on;
- `score_file`: scores replies the user obtained some other way (a JSON list, one reply per record).
Only `ask_judge` opens a connection, and only to the URL given.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelqa.files import atomic_file, disk_error

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
    user = f"Reference description: {record.get('caption', '')}\nModel description: {record.get('pred', '')}"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Failure:
    """Why a record got no reply: the reason shown (HTTP status or error, and the URL, never the key), whether the user
    must fix it (a wrong URL, key or model: retrying cannot help) and whether another try may help."""

    reason: str
    user_error: bool
    retry: bool
    kind: str  # http | unreachable | timeout | connection | request | reply: what `failure_hint` advises on
    status: int | None = None


# Refusals of one request's content (too long for the model, a content policy, a field the server rejects): the
# next record may pass, so they are counted against their record and never stop the run.
RECORD_STATUSES = (400, 413, 422)
RETRY_AFTER_CAP = 60.0  # seconds: the longest pause a server's Retry-After may ask for between two tries


@dataclass
class JudgeReplies:
    """What `ask_judge` got: one reply per record (None where it failed) and the failure of each record that failed."""

    replies: list[str | None]
    failures: dict[int, Failure] = field(default_factory=dict)
    stopped: Failure | None = None  # the failure before any reply after which the other records were not sent
    unsent: int = 0  # records not sent because of `stopped`


def shown_url(url: str) -> str:
    """`url` without user info, query or fragment: what a message may show (a key can hide in any of them)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a chat-completions endpoint (None when it can): an http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    # http.client refuses these in a request line; caught here they are the user's, not a server outage
    bad = next(((i, c) for i, c in enumerate(url) if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        return f"contains {bad[1]!r} at position {bad[0]}, which a URL cannot hold; percent-encode it, a space as %20"
    return None


def invalid_request_reason(exc: ValueError | http.client.InvalidURL, url: str) -> str:
    """Why a request to `url` could not even be sent, without the exception's text (it may quote a query that holds
    a key, or the key itself)."""
    if isinstance(exc, http.client.InvalidURL):
        why = "the URL holds a space or a control character"
    elif isinstance(exc, UnicodeEncodeError) and exc.encoding == "ascii":
        why = "the URL holds a non-ASCII character; percent-encode it"
    elif isinstance(exc, UnicodeEncodeError):
        why = "a header holds a character HTTP does not allow; check the API key's value"
    else:
        why = type(exc).__name__
    return f"cannot send a request to {url} ({why})"


def request_failure(exc: BaseException, url: str, timeout: float, answered: bool) -> Failure:
    """The Failure of one request that raised `exc`; a connection refused before the endpoint ever answered is a
    wrong URL (the user's), once it has answered a passing outage (retried)."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason} from {url}"
        server = exc.code >= 500 or exc.code in (408, 429)  # busy or broken: the same request may pass later
        return Failure(text, user_error=not server, retry=server, kind="http", status=exc.code)
    if isinstance(exc, (ValueError, http.client.InvalidURL)):  # the same for every try and every record
        return Failure(invalid_request_reason(exc, url), user_error=True, retry=False, kind="request")
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, TimeoutError):
        return Failure(f"no reply from {url} within {timeout:g} s", user_error=False, retry=True, kind="timeout")
    if isinstance(exc, urllib.error.URLError):
        return Failure(f"cannot reach {url} ({inner})", user_error=not answered, retry=answered, kind="unreachable")
    text = f"connection to {url} failed ({type(exc).__name__}: {exc})"
    return Failure(text, user_error=False, retry=True, kind="connection")


def stops_run(failure: Failure) -> bool:
    """Whether a failure before any reply would meet every record too (a wrong URL, key or model, a server down), so
    that the other records are not sent; a refusal of the record's own content (`RECORD_STATUSES`) would not."""
    return failure.status not in RECORD_STATUSES


def retry_after(exc: BaseException) -> float | None:
    """The pause in seconds an HTTP 429 or 503 asks for in its Retry-After header (the seconds form, capped at
    `RETRY_AFTER_CAP`), or None."""
    if not isinstance(exc, urllib.error.HTTPError) or exc.code not in (429, 503) or exc.headers is None:
        return None
    value = (exc.headers.get("Retry-After") or "").strip()
    # the HTTP-date form is rare from APIs: the fixed backoff stands in for it
    if not (value.isascii() and value.isdigit()):
        return None
    return min(float(value), RETRY_AFTER_CAP)


def reply_content(raw: bytes) -> str:
    """The message text of a chat-completions response body; ValueError naming what is missing."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"no choices[0].message.content: {type(exc).__name__}") from None
    if not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is {type(content).__name__}, expected text")
    return content


def ask_record(
    url: str, body: bytes, headers: dict[str, str], tries: int, timeout: float, backoff: float, answered: bool
) -> tuple[str | None, Failure | None]:
    """(reply, None) for one record, retried up to `tries` times until its reply parses (an unparsable last reply is
    kept), or (None, why it failed): a refusal (HTTP 4xx, an unreachable URL before any reply) is not retried."""
    shown = shown_url(url)
    reply, failure = None, None
    for attempt in range(tries):
        asked = None  # the pause the server asked for (Retry-After)
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        # URLError and HTTPError are OSErrors; a URL or header http.client cannot send raises InvalidURL (an
        # HTTPException) or a ValueError (UnicodeEncodeError)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                asked = retry_after(exc)
                exc.close()  # it holds the error response open
            failure = request_failure(exc, shown, timeout, answered or reply is not None)
            if not failure.retry:
                break
        else:
            try:
                reply, failure = reply_content(raw), None
            except ValueError as exc:  # a web page or another API at that URL; retried, as a glitch may be
                text = f"the reply of {shown} is not a chat-completions response ({exc})"
                failure = Failure(text, user_error=True, retry=True, kind="reply")
            if reply is not None and parse_scores(reply) is not None:
                break
        if attempt + 1 < tries:
            time.sleep(max(backoff * (attempt + 1), asked or 0.0))
    # an unparsable reply is kept (and counted unparsed), not a failure
    return (reply, None) if reply is not None else (None, failure)


def ask_judge(
    records: Sequence[dict],
    url: str,
    model: str,
    api_key: str | None = None,
    tries: int = 5,
    timeout: float = 60.0,
    backoff: float = 2.0,
) -> JudgeReplies:
    """One reply per record from an OpenAI-compatible chat-completions endpoint; a record whose every try failed
    gets None and its Failure. When a record fails for good before any reply with a failure every record would
    meet (`stops_run`: a wrong URL or key, a server down) the others are not sent and count as failed the same way
    (`stopped`): each would wait through the same failure."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    out = JudgeReplies([])
    for i, record in enumerate(records):
        if out.stopped is not None:
            out.replies.append(None)
            out.failures[i] = out.stopped
            out.unsent += 1
            continue
        body = json.dumps({"model": model, "messages": judge_messages(record), **RELEASED_SETTINGS}).encode()
        answered = any(r is not None for r in out.replies)
        reply, failure = ask_record(url, body, headers, tries, timeout, backoff, answered)
        out.replies.append(reply)
        if failure is not None:
            out.failures[i] = failure
            if not answered and stops_run(failure):
                out.stopped = failure
    return out


def failure_hint(failure: Failure, url: str, api_key_env: str) -> str:
    """What the user can check for a failure (the key's variable, the URL's form), or ''."""
    if failure.status in (401, 403):
        state = "set" if os.environ.get(api_key_env) else "not set"
        return f"; check the API key, read from ${api_key_env} ({state}; --api-key-env names another variable)"
    if failure.kind == "unreachable":
        return "; check the host and port of --url"
    if failure.status in RECORD_STATUSES:
        return "; the endpoint refused those records themselves (too long for the model, or their content)"
    if failure.status == 404 or failure.kind == "reply":
        path = urllib.parse.urlsplit(url).path
        if not path.rstrip("/").endswith("chat/completions"):
            return f"; --url must be the full chat-completions URL (.../v1/chat/completions), got the path {path!r}"
        return "; check --url and --model (a model the endpoint does not serve is a 404 too)"
    return ""


def failure_counts(judged: JudgeReplies) -> dict[Failure, int]:
    """Records failed per distinct failure, most frequent first."""
    counts: dict[Failure, int] = {}
    for failure in judged.failures.values():
        counts[failure] = counts.get(failure, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def summarize(judged: JudgeReplies, judge_model: str) -> dict[str, Any]:
    """scores.json: the judge, records, judged / unparsed among the replies, failed (not judged, not scored) with
    the reason of each, and the four means over the parsed replies."""
    answered = [r for i, r in enumerate(judged.replies) if i not in judged.failures]
    row = aggregate(answered)
    scores = {k: v for k, v in row.items() if k in DIMENSIONS or k == "All"}
    counts = {"judged": row["judged"], "unparsed": row["unparsed"], "failed": len(judged.failures)}
    reasons = {f.reason: n for f, n in failure_counts(judged).items()}
    return {"judge": judge_model, "records": len(judged.replies), **counts, "failures": reasons, **scores}


def check_records(records: object) -> str | None:
    """Why `records` is not a judge input (None when it is): a non-empty list of objects with text `caption` and
    `pred`, as the evaluation writes them."""
    if not isinstance(records, list) or not records:
        return "expected a non-empty JSON list of records"
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("caption", "pred")):
            return f"record {i}: expected an object with text fields 'caption' and 'pred' (as the evaluation writes)"
    return None


EPILOG = """\
The API key is read from the environment variable that --api-key-env names
(default OPENAI_API_KEY) and sent as 'Authorization: Bearer KEY'; it is never
printed. Without it no Authorization header is sent (local endpoints).

Writes replies.json and scores.json beside JUDGE_INPUT. A record whose request
failed is counted as failed, never scored; each kind of failure is one warning
line. A failure before any reply that every record would meet (HTTP
401/403/404, an unreachable or malformed URL, a server down) stops the run; a
refusal of one record (HTTP 400/413/422: too long, its content) is counted
against that record and the run goes on. A 429 or 503 with Retry-After (in
seconds) is retried after that pause, at most 60 s. Exit status: 0 when some
record got a reply (failed records are counted in the summary and in
scores.json); 2 on a user error (the input file, --url, a refused request: HTTP
4xx, an unreachable URL, an output that cannot be written); 1 when every
request failed on the server's side (HTTP 5xx, time-outs) after --tries
attempts.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the judge."""
    ap = argparse.ArgumentParser(
        prog="python -m pixelqa.eval.judge",
        description="Score VideoRefer-Bench-D's judge_input.json with an OpenAI-compatible judge endpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("judge_input", help="judge_input.json written by the evaluation")
    ap.add_argument(
        "--url",
        required=True,
        help="the full chat-completions URL, e.g. https://api.openai.com/v1/chat/completions (not the /v1 base)",
    )
    ap.add_argument("--model", required=True, help="judge model name, e.g. gpt-4o-mini (recorded with the scores)")
    ap.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable the API key is read from (default: %(default)s)",
    )
    ap.add_argument(
        "--tries",
        type=int,
        default=5,
        help="attempts per record on a server error, time-out or unparsable reply (default: %(default)s)",
    )
    return ap


def report_failures(judged: JudgeReplies, url: str, api_key_env: str, tries: int) -> None:
    """One warning line on stderr per distinct failure: the records it left unjudged, the reason and a hint."""
    total = len(judged.replies)
    for failure, n in failure_counts(judged).items():
        how = f" (after {tries} tries each)" if failure.retry else ""
        hint = failure_hint(failure, url, api_key_env)
        print(f"warning: judge: {n} of {total} records not judged: {failure.reason}{how}{hint}", file=sys.stderr)


def all_failed_line(judged: JudgeReplies, url: str, api_key_env: str, tries: int) -> str:
    """The one error line of a run in which no record got a reply: each failure with its hint, and where the run
    stopped."""
    kinds = failure_counts(judged)
    reasons = "; ".join(
        f"{f.reason}{f' (after {tries} tries)' if f.retry else ''}{failure_hint(f, url, api_key_env)}"
        + (f" ({n} records)" if len(kinds) > 1 else "")
        for f, n in kinds.items()
    )
    unsent = judged.unsent
    stop = f"; stopped there, the other {unsent} records were not sent" if unsent else ""
    return f"error: judge: no record judged, every request failed: {reasons}{stop}"


def summary_line(scores: dict[str, Any]) -> str:
    """`judged: N of M`, with `; failed: K (reason)` when records failed (several reasons: `n: reason` each)."""
    line = f"judged: {scores['judged']} of {scores['records']}"
    reasons = scores["failures"]
    if reasons:
        shown = next(iter(reasons)) if len(reasons) == 1 else "; ".join(f"{n}: {r}" for r, n in reasons.items())
        line += f"; failed: {scores['failed']} ({shown})"
    return line


def write_output(path: Path, data: object) -> str | None:
    """Write `data` as JSON to `path` whole or not at all (an earlier file stays as it was); the one error line
    when that fails (a read-only folder, a full disk), else None."""
    text = json.dumps(data, indent=1)
    try:
        atomic_file(path, lambda tmp: tmp.write_text(text))
    except OSError as exc:
        return f"error: judge: cannot write {path}: {disk_error(exc) or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    """CLI: ask a judge endpoint about a judge_input.json, write replies.json and scores.json beside it."""
    args = build_parser().parse_args(argv)
    path = Path(args.judge_input)
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 (UnicodeDecodeError)
        print(f"error: judge_input: {path}: {exc}", file=sys.stderr)
        return 2
    problem = check_records(records)
    if problem:
        print(f"error: judge_input: {path}: {problem}", file=sys.stderr)
        return 2
    problem = url_problem(args.url)
    if problem:
        print(
            f"error: --url: got {shown_url(args.url)!r} ({problem}); expected the full chat-completions URL, "
            "e.g. https://api.openai.com/v1/chat/completions",
            file=sys.stderr,
        )
        return 2
    if args.tries < 1:
        print(f"error: --tries: got {args.tries}, expected an integer >= 1", file=sys.stderr)
        return 2
    judged = ask_judge(records, args.url, args.model, os.environ.get(args.api_key_env), args.tries)
    if len(judged.failures) == len(records):  # nothing to score: no scores.json that reads like a result
        print(all_failed_line(judged, args.url, args.api_key_env, args.tries), file=sys.stderr)
        return 2 if any(f.user_error for f in judged.failures.values()) else 1
    report_failures(judged, args.url, args.api_key_env, args.tries)
    scores = summarize(judged, args.model)
    for name, data in (("replies.json", judged.replies), ("scores.json", scores)):
        problem = write_output(path.parent / name, data)
        if problem:
            if name == "scores.json":  # replies.json is this run's already: say which files belong together
                problem += "; replies.json beside it is this run's, an earlier scores.json is not"
            print(problem, file=sys.stderr)
            return 2
    print(f"judge: {args.model}")
    print(summary_line(scores))
    for key in ("unparsed", *DIMENSIONS, "All"):
        if key in scores:
            print(f"{key}: {scores[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
