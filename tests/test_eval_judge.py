"""VideoRefer-Bench-D's judge endpoint: a real HTTP server on loopback stands in for the judge (good answers, 400,
401, 404, 429, 500), and a closed port for an unreachable one. Every failed request is counted and reported with its
status and URL (never the key), and never scored as a reply."""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from pixelqa.eval import judge

RECORDS = [
    {"video": "a.mp4", "index": 0, "caption": "A red box slides.", "pred": "A red box moves right."},
    {"video": "b.mp4", "index": 1, "caption": "A cat sleeps.", "pred": "A dog runs."},
]
GOOD = "Subject Correspondence: {sc}, Appearance Description: 4, Temporal Description: 3, Hallucination Detection: 2"


def answer(body: dict) -> tuple[int, dict]:
    """A judge's answer: SC 5 when the model's description names the red box, else 1."""
    described = body["messages"][1]["content"].split("Model description:")[1]
    text = GOOD.format(sc=5 if "red box" in described else 1)
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}


def refuse(status: int) -> Callable[[dict], tuple[int, dict]]:
    """A responder that answers every request with HTTP `status` and an OpenAI-style error body."""
    return lambda body: (status, {"error": {"message": "refused", "code": status}})


@pytest.fixture
def serve():
    """Start an OpenAI-compatible endpoint on 127.0.0.1 answering through `responder(body) -> (status, json)` or
    `(status, json, headers)`; returns (the chat-completions URL, the requests seen)."""
    servers = []

    def start(responder: Callable[[dict], tuple[int, dict]]) -> tuple[str, list[dict]]:
        seen: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append({"body": body, "auth": self.headers.get("Authorization"), "path": self.path})
                status, payload, *extra = responder(body)
                out = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1/chat/completions", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The pauses between tries, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(judge.time, "sleep", seen.append)
    return seen


def write_input(tmp_path: Path, records: list[dict] = RECORDS) -> Path:
    path = tmp_path / "judge_input.json"
    path.write_text(json.dumps(records))
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ask_judge_retries_and_scores_every_record(serve, sleeps, tmp_path, monkeypatch, capsys):
    calls = []

    def flaky(body):  # the first request fails with 500, then the judge answers
        calls.append(body)
        return (500, {}) if len(calls) == 1 else answer(body)

    url, seen = serve(flaky)
    path = write_input(tmp_path)
    monkeypatch.setenv("JUDGE_KEY", "secret")
    assert judge.main([str(path), "--url", url, "--model", "gpt-4o-mini", "--api-key-env", "JUDGE_KEY"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    # hand-computed: SC 5 and 1 -> 3.0; AD 4; TD 3; HD 2; All = (3 + 4 + 3 + 2) / 4 = 3.0
    assert scores == {
        "judge": "gpt-4o-mini",
        "records": 2,
        "judged": 2,
        "unparsed": 0,
        "failed": 0,
        "failures": {},
        "SC": 3.0,
        "AD": 4.0,
        "TD": 3.0,
        "HD": 2.0,
        "All": 3.0,
    }
    assert len(seen) == 3 and sleeps == [2.0]  # the first request failed with 500 and was retried
    body = seen[-1]["body"]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.7 and body["top_p"] == 0.95
    # the model's description is the record's `pred`, the field the evaluation writes
    assert "Model description: A dog runs." in body["messages"][1]["content"] and seen[-1]["auth"] == "Bearer secret"
    assert json.loads((tmp_path / "replies.json").read_text())[0].startswith("Subject Correspondence: 5")
    captured = capsys.readouterr()
    assert "judged: 2 of 2\n" in captured.out and "All: 3.0" in captured.out and captured.err == ""


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_401_is_one_line_naming_status_url_and_key_variable_not_the_key(serve, sleeps, tmp_path, monkeypatch, capsys):
    url, seen = serve(refuse(401))
    path = write_input(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-print")
    assert judge.main([str(path), "--url", url + "?api_key=sk-in-the-url", "--model", "m", "--tries", "5"]) == 2
    err = _one_line_error(capsys)
    assert err == (
        f"error: judge: no record judged, every request failed: HTTP 401 Unauthorized from {url}; check the API key, "
        "read from $OPENAI_API_KEY (set; --api-key-env names another variable); stopped there, the other 1 records "
        "were not sent"
    )
    assert "sk-" not in err
    assert len(seen) == 1 and sleeps == []  # a refusal is not retried, and the other record is not sent
    assert not (tmp_path / "scores.json").exists()  # nothing that reads like a result


def test_404_on_the_v1_base_says_url_must_be_the_full_chat_completions_url(serve, sleeps, tmp_path, capsys):
    url, _ = serve(refuse(404))
    base = url.removesuffix("/chat/completions")
    assert judge.main([str(write_input(tmp_path)), "--url", base, "--model", "m"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: judge: no record judged, every request failed: HTTP 404 Not Found from {base}; ")
    assert "--url must be the full chat-completions URL (.../v1/chat/completions), got the path '/v1'" in err


def test_server_errors_after_every_try_exit_1(serve, sleeps, tmp_path, capsys):
    url, seen = serve(refuse(500))
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m", "--tries", "3"]) == 1
    err = _one_line_error(capsys)
    assert f"every request failed: HTTP 500 Internal Server Error from {url} (after 3 tries)" in err
    assert len(seen) == 3 and sleeps == [2.0, 4.0]  # three tries of the first record; the endpoint is down


def test_unreachable_port_is_a_user_error_without_retries(sleeps, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1/chat/completions"
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: judge: no record judged, every request failed: cannot reach {url} (")
    assert "refused" in err.lower() and "check the host and port of --url" in err
    assert sleeps == []
    replies = judge.ask_judge([{"caption": "x", "pred": "y"}], url, "m", tries=2)
    assert replies.replies == [None] and replies.failures[0].kind == "unreachable"


def test_partial_failure_is_reported_and_not_scored(serve, sleeps, tmp_path, capsys):
    # the red-box record is answered, the other always gets 500
    url, seen = serve(lambda body: answer(body) if "red box" in json.dumps(body) else (500, {}))
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m", "--tries", "2"]) == 0
    captured = capsys.readouterr()
    reason = f"HTTP 500 Internal Server Error from {url}"
    assert captured.err == f"warning: judge: 1 of 2 records not judged: {reason} (after 2 tries each)\n"
    assert f"judged: 1 of 2; failed: 1 ({reason})\n" in captured.out
    scores = json.loads((tmp_path / "scores.json").read_text())
    # only the answered record is scored: SC 5, AD 4, TD 3, HD 2, All 3.5
    assert scores["records"] == 2 and scores["judged"] == 1 and scores["unparsed"] == 0 and scores["failed"] == 1
    assert scores["failures"] == {reason: 1}
    assert (scores["SC"], scores["AD"], scores["TD"], scores["HD"], scores["All"]) == (5.0, 4.0, 3.0, 2.0, 3.5)
    assert json.loads((tmp_path / "replies.json").read_text())[1] is None and len(seen) == 3


def test_cli_bad_input_url_and_tries_are_one_line(tmp_path, capsys):
    assert judge.main([str(tmp_path / "missing.json"), "--url", "http://127.0.0.1:9", "--model", "m"]) == 2
    assert capsys.readouterr().err.startswith("error: judge_input:")
    old_form = write_input(tmp_path, [{"caption": "x", "prediction": "y"}])
    assert judge.main([str(old_form), "--url", "http://127.0.0.1:9", "--model", "m"]) == 2
    assert "record 0: expected an object with text fields 'caption' and 'pred'" in _one_line_error(capsys)
    path = write_input(tmp_path)
    assert judge.main([str(path), "--url", "api.openai.com/v1/chat/completions", "--model", "m"]) == 2
    assert _one_line_error(capsys).startswith("error: --url: got 'api.openai.com/v1/chat/completions' (not an http(s)")
    assert (
        judge.main([str(path), "--url", "http://127.0.0.1:9/v1/chat/completions", "--model", "m", "--tries", "0"]) == 2
    )
    assert _one_line_error(capsys) == "error: --tries: got 0, expected an integer >= 1"


def test_help_says_where_the_key_is_read_from_and_what_url_is():
    text = " ".join(judge.build_parser().format_help().split())
    assert "--api-key-env API_KEY_ENV environment variable the API key is read from (default: OPENAI_API_KEY)" in text
    assert "the full chat-completions URL, e.g. https://api.openai.com/v1/chat/completions" in text


def test_judge_input_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "judge_input.json"
    path.write_bytes(b'[{"caption": "\xff\xfe"}]')  # not UTF-8: a binary file or another encoding
    assert judge.main([str(path), "--url", "http://127.0.0.1:9/v1/chat/completions", "--model", "m"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: judge_input: {path}: 'utf-8' codec can't decode byte 0xff"), err


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://127.0.0.1:9/v1/chat completions", "' ' at position 26"),  # 7 + 9 + 2 + 3 + 5 characters before it
        ("http://127.0.0.1:9/v1/chat/completions\n", "'\\n' at position 38"),
        ("http://127.0.0.1:9/v1/\x00", "'\\x00' at position 22"),
    ],
)
def test_url_with_whitespace_or_control_characters_is_refused_up_front(serve, sleeps, tmp_path, capsys, url, shown):
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m"]) == 2
    err = _one_line_error(capsys)
    # (urlsplit drops a newline from the URL shown; the position counts it)
    assert err.startswith("error: --url: got 'http://127.0.0.1:9/v1/") and "\n" not in err, err
    assert f"(contains {shown}, which a URL cannot hold; percent-encode it, a space as %20)" in err, err
    assert sleeps == []


def test_a_url_http_client_cannot_send_is_a_user_error_not_retried(serve, sleeps):
    url, seen = serve(answer)
    records = [{"caption": "x", "pred": "y"}] * 3
    # past `url_problem` (a library caller): the request is never sent, and the other records are not tried
    spaced = judge.ask_judge(records, url.replace("chat/", "chat ") + "?key=sk-secret", "m", tries=5)
    failure = spaced.failures[0]
    assert (failure.user_error, failure.retry, failure.kind) == (True, False, "request")
    expected = (
        f"cannot send a request to {url.replace('chat/', 'chat ')} (the URL holds a space or a control character)"
    )
    assert failure.reason == expected and "sk-" not in failure.reason
    assert spaced.replies == [None] * 3 and spaced.stopped == failure and spaced.unsent == 2
    accented = judge.ask_judge(records, url.replace("chat", "chät"), "m", tries=5)
    assert accented.failures[0].reason.endswith("(the URL holds a non-ASCII character; percent-encode it)")
    assert accented.failures[0].user_error and accented.unsent == 2
    assert seen == [] and sleeps == []


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_record_specific_refusal_is_counted_and_the_run_goes_on(serve, sleeps, tmp_path, capsys, status):
    # the endpoint refuses the red-box record (say, too long for the model) and answers the other
    url, seen = serve(lambda body: (status, {"error": {}}) if "red box" in json.dumps(body) else answer(body))
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"warning: judge: 1 of 2 records not judged: HTTP {status} ")
    assert captured.err.endswith(
        "; the endpoint refused those records themselves (too long for the model, or their content)\n"
    )
    assert len(seen) == 2 and sleeps == []  # both records sent once: a refusal is not retried
    scores = json.loads((tmp_path / "scores.json").read_text())
    # only the second record is scored: SC 1, AD 4, TD 3, HD 2, All (1 + 4 + 3 + 2) / 4 = 2.5
    assert (scores["judged"], scores["failed"], scores["SC"], scores["All"]) == (1, 1, 1.0, 2.5)
    assert json.loads((tmp_path / "replies.json").read_text())[0] is None


def test_a_refusal_every_record_would_meet_stops_after_record_specific_ones(serve, sleeps, tmp_path, capsys):
    records = [{"caption": "c", "pred": f"p{i}"} for i in range(4)]
    # record 0 is refused for itself (400), record 1 with 401: records 2 and 3 would get the same, so are not sent
    url, seen = serve(lambda body: refuse(400 if "p0" in json.dumps(body) else 401)(body))
    assert judge.main([str(write_input(tmp_path, records)), "--url", url, "--model", "m"]) == 2
    err = _one_line_error(capsys)
    assert f"HTTP 401 Unauthorized from {url}; check the API key" in err and f"HTTP 400 Bad Request from {url}" in err
    assert err.endswith("; stopped there, the other 2 records were not sent")
    assert len(seen) == 2 and sleeps == []


def test_retry_after_of_a_429_sets_the_pause_capped_at_60_s(serve, sleeps, tmp_path):
    waits = iter(["7", "3600", "1"])  # seconds the server asks for; 1 s is less than the backoff's 6 s

    def limited(body):
        wait = next(waits, None)
        return (429, {"error": {}}, {"Retry-After": wait}) if wait else answer(body)

    url, seen = serve(limited)
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m"]) == 0
    assert sleeps == [7.0, 60.0, 6.0] and len(seen) == 5  # 3 times 429, then both records answered


def test_an_unwritable_output_is_one_line_and_leaves_earlier_outputs_whole(
    serve, sleeps, tmp_path, capsys, monkeypatch
):
    url, _ = serve(answer)
    path = write_input(tmp_path)
    (tmp_path / "replies.json").write_text('["an earlier run"]')
    (tmp_path / "scores.json").write_text('{"judge": "earlier"}')

    def full_disk(self: Path, text: str, *args, **kwargs) -> int:  # half the text lands, then the disk is full
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert judge.main([str(path), "--url", url, "--model", "m"]) == 2
    assert (
        _one_line_error(capsys)
        == f"error: judge: cannot write {tmp_path / 'replies.json'}: no space left on the device"
    )
    monkeypatch.undo()
    assert (tmp_path / "replies.json").read_text() == '["an earlier run"]'  # whole: the write was atomic
    assert (tmp_path / "scores.json").read_text() == '{"judge": "earlier"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judge_input.json", "replies.json", "scores.json"]


def test_an_output_path_that_is_a_folder_is_one_line(serve, sleeps, tmp_path, capsys):
    url, _ = serve(answer)
    (tmp_path / "scores.json").mkdir()  # the user's folder of that name: a real OSError, even as root
    assert judge.main([str(write_input(tmp_path)), "--url", url, "--model", "m"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: judge: cannot write {tmp_path / 'scores.json'}: [Errno 21] Is a directory"), err
    assert err.endswith("; replies.json beside it is this run's, an earlier scores.json is not"), err
    assert json.loads((tmp_path / "replies.json").read_text())[1].startswith("Subject Correspondence: 1")
