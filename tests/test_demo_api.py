"""The web demo's HTTP API on the tiny model, through a real server on a free loopback port: uploads and their
caps, prompts in pixels reaching the model normalised on the right frame, two rounds naming a memory object,
downloads that agree with the prediction, session folders removed, and messages that never show server paths."""

from __future__ import annotations

import base64
import http.cookiejar
import io
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image
from test_predict_units import H, W, frame_array, write_video

from pixelqa.demo import __main__ as cli
from pixelqa.demo.app import Demo, build_app
from pixelqa.demo.media import Limits
from pixelqa.demo.messages import INTERNAL, user_message
from pixelqa.demo.sessions import SessionStore
from pixelqa.model.chat import Mask, Point
from pixelqa.predict import PredictInputError, Predictor
from pixelqa.predict.outputs import rle_decode


@lru_cache(maxsize=1)
def tiny_predictor() -> Predictor:
    """The demo's `--model tiny` predictor, built once per test process."""
    from pixelqa.demo.models import resolve_model

    model, info = resolve_model("tiny")
    return Predictor(model, max_new_tokens=8, model_info=info)


@contextmanager
def running_demo(limits: Limits | None = None, idle_s: float = 1800.0):
    """(base URL, Demo) of a demo server on a free loopback port, in a thread; stopped and cleaned on exit."""
    import uvicorn

    demo = Demo(
        tiny_predictor(), limits or Limits(max_bytes=2**20, max_video_frames=30, max_frames=8), SessionStore(4, idle_s)
    )
    sock = cli.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(demo), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the demo server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", demo
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        demo.store.close()


class Client:
    """A browser-like HTTP client: keeps the session cookie, returns (status, JSON or bytes)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        assert self.opener.open(base + "/").status == 200  # the page; its first upload or sample opens a session

    def call(self, path: str, data: bytes | dict | None = None, raw: bool = False):
        body = json.dumps(data).encode() if isinstance(data, dict) else data
        request = urllib.request.Request(self.base + path, data=body, method="GET" if data is None else "POST")
        try:
            with self.opener.open(request) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        return status, payload if raw else json.loads(payload)

    def ask(self, text: str, prompts: list) -> dict:
        """Ask and wait for the turn to finish; the final state."""
        status, state = self.call("/api/ask", {"text": text, "prompts": prompts})
        assert status == 202, state
        deadline = time.monotonic() + 120
        while state["progress"]["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
            state = self.call("/api/state")[1]
        return state


@pytest.fixture(scope="module")
def server():
    with running_demo() as (base, demo):
        yield base, demo


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG of a width x height RGB image whose pixel data is one empty IDAT chunk (readers stop at IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def session_of(demo: Demo):
    (session,) = demo.store._sessions.values()
    return session


def test_bad_uploads_show_one_line_naming_the_file_without_server_paths(tmp_path):
    long_clip = tmp_path / "long.mp4"
    write_video(long_clip, 31)
    good = png_bytes(frame_array(0))
    cases = {
        "notes.txt": (b"hello", "is not an image"),
        "broken.png": (good[: len(good) // 2], "cannot be decoded as an image"),
        "noise.mp4": (bytes(range(256)) * 8, "cannot be decoded as a video"),
        "huge.png": (b"\0" * (2**20 + 1), "too large; expected at most 1 MiB"),
        "long.mp4": (long_clip.read_bytes(), "the video has 31 frames; expected at most 30"),
        "empty.png": (b"", "is empty"),
        # sizes read from the header alone (the files hold no pixel data): refused before any decoding
        "wide.png": (png_header(4000, 3000), "frames of 4000x3000 are too large; expected at most 2073600 pixels"),
        "bomb.png": (png_header(30000, 30000), "is too large to decode safely"),
    }
    with running_demo() as (base, demo):
        client = Client(base)
        status, answer = client.call("/api/frame/0")  # no media yet: a user error, not a server error
        assert status == 400 and answer["error"] == "frame: got 0, expected a frame of the media", answer
        for name, (data, expected) in cases.items():
            status, answer = client.call(f"/api/upload?name={name}", data)
            folder = str(session_of(demo).folder)  # opened by the first upload, refused or not
            assert status == 400, (name, answer)
            text = answer["error"]
            assert expected in text and "\n" not in text, (name, text)
            assert name in text or name in ("huge.png", "long.mp4", "wide.png"), text  # these name a size / length
            assert str(demo.store.root) not in text and "/tmp" not in text and folder not in text, text
            assert "Traceback" not in text
        assert client.call("/api/state")[1]["media"] is None  # nothing was loaded
        assert not list(session_of(demo).folder.iterdir())  # refused bytes are not kept


def test_messages_swap_server_paths_and_cut_unknown_ones():
    exc = PredictInputError("--media: '/srv/x/s1/upload.mp4' cannot be decoded as a video or image: bad '/opt/a/b.c'")
    text = user_message(exc, {"/srv/x/s1/upload.mp4": "clip.mp4", "/srv/x": "(server)"})
    assert text == "upload: 'clip.mp4' cannot be decoded as a video or image: bad '(path)'"
    assert user_message(PredictInputError("--text: names object [3]"), {}) == "text: names object [3]"


def test_image_point_then_second_round_naming_memory_and_downloads(server):
    base, demo = server
    client = Client(base)
    image = frame_array(0)
    status, state = client.call("/api/upload?name=my%20shot.png", png_bytes(image))
    assert status == 200 and state["media"]["kind"] == "image" and state["media"]["size"] == [H, W]
    assert state["media"]["name"] == "my shot.png"
    status, frame = client.call("/api/frame/0", raw=True)
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(frame))), image)
    mask = np.zeros((H, W), bool)
    mask[30:44, 20:50] = True
    drawn = np.zeros((H, W, 4), np.uint8)
    drawn[mask] = (255, 255, 255, 255)  # what the page's canvas sends: white strokes on transparent pixels
    url = "data:image/png;base64," + base64.b64encode(png_bytes(drawn)).decode()
    state = client.ask(
        "What is it?", [{"kind": "point", "frame": 0, "x": 24, "y": 12}, {"kind": "mask", "frame": 0, "png": url}]
    )
    assert not state["progress"]["error"], state["progress"]
    session = next(s for s in demo.store._sessions.values() if s.media_name == "my shot.png")
    first = session.latest
    assert first.prompts[0] == Point(24 / W, 12 / H, frame=0, object_id=0)
    assert isinstance(first.prompts[1], Mask) and first.prompts[1].object_id == 1
    assert np.array_equal(first.prompts[1].mask.numpy(), mask)
    assert state["turns"] == [{"text": "What is it?", "answer": first.answer}]
    assert [m["id"] for m in state["memory"]] == [0, 1] and all(m["new"] for m in state["memory"])
    # second round names a memory object; a missing one is refused with the memory listed
    state = client.ask("What is [1] next to?", [])
    assert not state["progress"]["error"] and len(state["turns"]) == 2 and state["latest"] == 2
    assert session.turns[1].text == "What is [1] next to?" and "[1]" in session.turns[1].model_text
    state = client.ask("What is [7]?", [])
    assert "[7], which is not in memory (memory holds [0], [1])" in state["progress"]["error"]
    assert len(state["turns"]) == 2
    state = client.ask("Why? " * 1000, [])  # 5000 characters: a question, not a document
    assert state["progress"]["error"] == "question: got 5000 characters, expected at most 2000"
    assert len(state["turns"]) == 2
    # downloads: RLE JSON and PNG zip both equal the memory bank of the latest turn
    memory = {k: m.numpy() for k, m in session.latest.memory.items()}
    status, doc = client.call(state["downloads"]["json"])
    assert status == 200 and set(doc["objects"]) == {"0", "1"}
    for k, rles in doc["objects"].items():
        assert np.array_equal(rle_decode(rles[0]), memory[int(k)][0])
    status, data = client.call(state["downloads"]["zip"], raw=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (name,) = zf.namelist()
        ids = np.asarray(Image.open(io.BytesIO(zf.read(name))))
    expected = np.zeros((H, W), np.uint8)
    for k in sorted(memory):
        expected[memory[k][0]] = k + 1
    assert np.array_equal(ids, expected) and (ids > 0).any()
    status, overlay = client.call(state["downloads"]["overlay"], raw=True)
    assert status == 200 and overlay[:8] == b"\x89PNG\r\n\x1a\n"
    status, thumb = client.call(state["memory"][0]["thumb"], raw=True)
    assert Image.open(io.BytesIO(thumb)).size == (96, 96)


def test_video_prompt_on_a_later_frame_reaches_the_model_on_that_frame(server, tmp_path):
    base, demo = server
    write_video(tmp_path / "clip.mp4", 20)
    client = Client(base)
    status, state = client.call("/api/upload?name=clip.mp4", (tmp_path / "clip.mp4").read_bytes())
    assert status == 200, state
    names = state["media"]["names"]
    ids = [int(n) for n in names]
    assert len(ids) == 8 and ids[0] == 0 and ids[-1] == 19 and ids == sorted(set(ids))  # 8 of 20, both ends
    state = client.ask("Where does it go?", [{"kind": "box", "frame": 3, "x1": 10, "y1": 4, "x2": 40, "y2": 30}])
    assert not state["progress"]["error"], state["progress"]
    session = next(s for s in demo.store._sessions.values() if s.media_name == "clip.mp4")
    pred = session.latest
    assert pred.prompts[0].frame == 3 and pred.media.frame_ids[3] == ids[3]
    assert 3 in pred.llm_positions and state["media"]["llm_positions"] == pred.llm_positions
    assert state["downloads"]["overlay_kind"] == "mp4"
    status, video = client.call(state["downloads"]["overlay"], raw=True)
    assert status == 200 and video[4:8] == b"ftyp"
    status, overlay = client.call(f"/api/overlay/1/{len(ids) - 1}", raw=True)
    assert status == 200 and Image.open(io.BytesIO(overlay)).size[0] >= W
    # a second round with a new box: SAM propagates the new object and reports its frames on the progress line
    state = client.ask("And this one?", [{"kind": "box", "frame": 5, "x1": 2, "y1": 30, "x2": 60, "y2": 46}])
    assert not state["progress"]["error"] and [m["id"] for m in state["memory"]] == [0, 1]
    progress = state["progress"]
    assert progress["total"] >= len(ids) and progress["done"] == progress["total"], progress


def test_session_folder_removed_when_the_page_ends_or_goes_idle(tmp_path):
    with running_demo(idle_s=0.2) as (base, demo):
        client = Client(base)
        assert client.call("/api/sample", {"name": "shapes-image"})[0] == 200
        folder = session_of(demo).folder
        assert folder.is_dir()
        assert client.call("/api/end", b"")[1] == {"ended": True}
        assert not folder.exists() and len(demo.store) == 0
        status, answer = client.call("/api/state")
        assert status == 401 and "reload the page" in answer["error"]
        # a page left open and unseen: the server's reaper removes its session
        assert Client(base).call("/api/sample", {"name": "shapes-image"})[0] == 200
        folder = session_of(demo).folder
        deadline = time.monotonic() + 5
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not folder.exists() and len(demo.store) == 0
    assert not demo.store.root.exists()  # server shutdown removes the root


def test_an_internal_failure_shows_a_generic_line_and_is_logged(server, monkeypatch, caplog):
    base, _ = server

    def broken(name):
        raise RuntimeError("disk full at /srv/secret/cache/x.bin")

    monkeypatch.setattr("pixelqa.demo.media.sample_media", broken)  # a server-side fault, not the user's
    status, answer = Client(base).call("/api/sample", {"name": "shapes-video"})
    assert status == 500 and answer["error"] == INTERNAL
    assert "disk full at /srv/secret" in caplog.text  # the details stay in the server log


def test_requests_naming_another_host_are_refused(server):
    base, _ = server
    request = urllib.request.Request(base + "/", headers={"Host": "attacker.example"})  # DNS rebinding
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    assert urllib.request.urlopen(base + "/").status == 200


def test_cli_binds_loopback_and_user_errors_are_one_line(capsys):
    args = cli.build_parser().parse_args([])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, "tiny")
    assert cli.main(["--port", "70000"]) == 2
    assert cli.main(["--model", "/nonexistent/model", "--port", "0"]) == 2
    taken = cli.bind("127.0.0.1", 0)
    try:
        assert cli.main(["--port", str(taken.getsockname()[1])]) == 2  # refused before the model loads
    finally:
        taken.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: --") for line in err), err
    assert "expected 0..65535" in err[0] and "does not exist" in err[1] and "cannot listen" in err[2]


def test_banner_names_the_model_path_and_its_format(monkeypatch, capsys, tmp_path):
    import uvicorn

    ckpt = tmp_path / "runs" / "stage3" / "checkpoints" / "last.ckpt"
    loaded = {"path": str(ckpt), "format": "lightning", "device": "cpu", "dtype": "float32"}
    tiny = tiny_predictor()  # built before resolve_model is replaced (it builds through it)
    monkeypatch.setattr("pixelqa.demo.models.resolve_model", lambda *a: (tiny.model, dict(loaded)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # print the banner, serve nothing
    assert cli.main(["--model", str(ckpt), "--port", "0"]) == 0
    banner = capsys.readouterr().out.strip().splitlines()[-1]
    assert banner.startswith("demo: http://127.0.0.1:") and f"(model: {ckpt} (lightning); Ctrl-C" in banner
    assert cli.model_label(tiny.model_info) == "tiny (random weights)"  # no file to name
