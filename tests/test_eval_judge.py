"""VideoRefer-Bench-D's judge endpoint: a real HTTP server on loopback stands in for the judge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pixelqa.eval import judge


@pytest.fixture
def judge_server():
    """An OpenAI-compatible endpoint on 127.0.0.1: fails the first request with 500, then answers."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"body": body, "auth": self.headers.get("Authorization")})
            if len(seen) == 1:
                self.send_response(500)
                self.end_headers()
                return
            caption = body["messages"][1]["content"]
            score = 5 if "red box" in caption.split("Model description:")[1] else 1
            text = (
                f"Subject Correspondence: {score}, Appearance Description: 4, Temporal Description: 3, "
                "Hallucination Detection: 2"
            )
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/chat/completions", seen
    server.shutdown()


def test_ask_judge_retries_and_scores_every_record(judge_server, tmp_path, monkeypatch, capsys):
    url, seen = judge_server
    records = [
        {"video": "a.mp4", "index": 0, "caption": "A red box slides.", "prediction": "A red box moves right."},
        {"video": "b.mp4", "index": 1, "caption": "A cat sleeps.", "prediction": "A dog runs."},
    ]
    path = tmp_path / "judge_input.json"
    path.write_text(json.dumps(records))
    monkeypatch.setenv("JUDGE_KEY", "secret")
    monkeypatch.setattr(judge.time, "sleep", lambda s: None)
    assert judge.main([str(path), "--url", url, "--model", "gpt-4o-mini", "--api-key-env", "JUDGE_KEY"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    # hand-computed: SC 5 and 1 -> 3.0; AD 4; TD 3; HD 2; All = (3 + 4 + 3 + 2) / 4 = 3.0
    assert scores == {
        "judge": "gpt-4o-mini",
        "judged": 2,
        "unparsed": 0,
        "SC": 3.0,
        "AD": 4.0,
        "TD": 3.0,
        "HD": 2.0,
        "All": 3.0,
    }
    assert len(seen) == 3  # the first request failed with 500 and was retried
    body = seen[-1]["body"]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.7 and body["top_p"] == 0.95
    assert "A dog runs." in body["messages"][1]["content"] and seen[-1]["auth"] == "Bearer secret"
    assert json.loads((tmp_path / "replies.json").read_text())[0].startswith("Subject Correspondence: 5")


def test_unreachable_judge_leaves_records_unscored(tmp_path, monkeypatch):
    monkeypatch.setattr(judge.time, "sleep", lambda s: None)
    replies = judge.ask_judge([{"caption": "x", "prediction": "y"}], "http://127.0.0.1:9/none", "m", tries=2)
    assert replies == [None] and judge.aggregate(replies) == {"judged": 0, "unparsed": 1}


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert judge.main([str(tmp_path / "missing.json"), "--url", "http://127.0.0.1:9", "--model", "m"]) == 2
    assert capsys.readouterr().err.startswith("error: judge_input:")
