"""The web demo under hostile or careless requests: a video over the caps is refused from its container before a
frame is decoded, and its probe runs off the event loop (other pages stay served); JSON bodies are capped and
repeated values shortened; page views open no session and a new session replaces an idle one rather than being
refused; odd JSON answers 400 with one line; an upload changes the session only once accepted."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import av
import numpy as np
import pytest
from test_demo_api import Client, png_bytes, running_demo, session_of
from test_predict_units import frame_array, write_video

from pixelqa.demo import media as demo_media
from pixelqa.demo.app import JSON_MAX
from pixelqa.demo.media import Limits, open_upload
from pixelqa.demo.sessions import SessionStore
from pixelqa.predict import PredictInputError

LIMITS = Limits(max_bytes=2**20, max_video_frames=30, max_frames=8)


def encode(path, n: int, size: int = 64, rate: int = 10, fmt: str | None = None, options: dict | None = None) -> None:
    """An n-frame mpeg4 clip of size x size black-to-grey frames (fmt / options: the container's)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), t % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class Counted:
    """A PyAV input container whose decoded frames and demuxed packets are counted (`av.open` replaced)."""

    frames = 0
    packets = 0

    def __init__(self, container) -> None:
        self._container = container

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def __enter__(self) -> Counted:
        return self

    def __exit__(self, *exc) -> None:
        self._container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            Counted.frames += 1
            yield frame

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            Counted.packets += 1
            yield packet


@pytest.fixture
def counted(monkeypatch):
    """Every `av.open` of a file for reading returns a Counted container; the counts start at 0."""
    real = av.open
    Counted.frames = Counted.packets = 0

    def counting_open(path, mode="r", **kwargs):
        container = real(path, mode, **kwargs)
        return Counted(container) if mode == "r" else container

    monkeypatch.setattr(av, "open", counting_open)
    return Counted


@pytest.fixture
def server_demo():
    with running_demo() as (base, demo):  # 4 sessions at most
        yield base, demo


# ---- F4: video caps from the container, before decoding; the probe off the event loop -----------------------------


def test_frames_over_the_pixel_cap_are_refused_from_the_header_before_any_frame_is_decoded(tmp_path, counted):
    big = tmp_path / "big.mp4"
    encode(big, 3, size=2048)  # 4 Mpixel frames, a few KB of file: decoding them is the cost
    counted.frames = 0
    with pytest.raises(PredictInputError) as refused:
        open_upload(big, LIMITS)
    assert counted.frames == 0
    assert "frames of 2048x2048 are too large; expected at most 2073600 pixels" in str(refused.value)


def test_a_long_video_is_refused_by_its_declared_count_before_any_frame_is_decoded(tmp_path, counted):
    clip = tmp_path / "long.mp4"
    encode(clip, 400)
    with pytest.raises(PredictInputError) as refused:
        open_upload(clip, LIMITS)
    assert counted.frames == 0 and counted.packets == 0  # the header alone
    assert "the video has 400 frames; expected at most 30 frames" in str(refused.value)


def test_a_long_webm_is_refused_by_its_duration_times_rate_before_decoding(tmp_path, counted):
    clip = tmp_path / "long.mkv"  # matroska declares no frame count, only a duration
    encode(clip, 400, fmt="matroska")
    with pytest.raises(PredictInputError) as refused:
        open_upload(clip, LIMITS)
    assert counted.frames == 0 and counted.packets == 0
    assert "the video lasts 40.0 s at 10 frames/s (about 400 frames); expected at most 30" in str(refused.value)


def test_without_count_or_duration_packets_are_counted_and_the_count_stops_past_the_cap(tmp_path, counted):
    clip = tmp_path / "live.mkv"
    encode(clip, 400, fmt="matroska", options={"live": "1"})  # a live stream's file: no count, no duration
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames == 0 and c.duration is None and not c.streams.video[0].metadata
    counted.frames = counted.packets = 0
    with pytest.raises(PredictInputError) as refused:
        open_upload(clip, LIMITS)
    assert counted.frames == 0
    assert counted.packets <= 2 * 30 + 2  # stopped past the cap, not read to the end (400)
    assert "the video has more than 30 frames; expected at most 30 frames" in str(refused.value)


def test_videos_within_the_caps_still_load(tmp_path):
    for name, kwargs in {
        "exact.mp4": {},
        "exact.mkv": {"fmt": "matroska"},
        "live.mkv": {"fmt": "matroska", "options": {"live": "1"}},
    }.items():
        encode(tmp_path / name, 30, **kwargs)  # exactly max_video_frames
        media = open_upload(tmp_path / name, LIMITS)
        assert media.info.num_frames == 30 and len(media.frame_ids) == 8, name


def test_an_upload_is_probed_off_the_event_loop_so_other_pages_are_served(monkeypatch, tmp_path):
    entered, release = threading.Event(), threading.Event()
    real = demo_media.open_upload

    def slow(path, limits):  # a long probe / decode, as of a large video
        entered.set()
        release.wait(30)
        return real(path, limits)

    write_video(tmp_path / "clip.mp4", 5)
    with running_demo() as (base, demo):
        other = Client(base)
        assert other.call("/api/sample", {"name": "shapes-image"})[0] == 200
        monkeypatch.setattr(demo_media, "open_upload", slow)
        uploader = Client(base)
        answers = []
        data = (tmp_path / "clip.mp4").read_bytes()
        thread = threading.Thread(target=lambda: answers.append(uploader.call("/api/upload?name=clip.mp4", data)))
        thread.start()
        try:
            assert entered.wait(30)
            request = urllib.request.Request(base + "/api/state")
            with other.opener.open(request, timeout=10) as r:  # the loop is free while the upload is probed
                assert r.status == 200 and json.loads(r.read())["media"]["kind"] == "image"
        finally:
            release.set()
            thread.join(60)
        assert answers and answers[0][0] == 200 and answers[0][1]["media"]["name"] == "clip.mp4", answers


# ---- F5: JSON bodies capped, values repeated shortened -------------------------------------------------------------


def chunked_post(base: str, path: str, chunks: list[bytes]) -> tuple[int, dict]:
    """POST a body sent in chunks (no Content-Length); (status, JSON answer)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_json_bodies_are_capped_and_values_repeated_shortened(server_demo):
    base, demo = server_demo
    client = Client(base)
    huge = {"name": "x" * (JSON_MAX + 10)}
    status, answer = client.call("/api/sample", huge)  # refused by its Content-Length
    assert status == 413 and len(answer["error"]) < 120 and "64 KiB" in answer["error"], answer
    part = b"x" * 8192  # no Content-Length: refused while read
    status, answer = chunked_post(base, "/api/sample", [b'{"name": "'] + [part] * 16 + [b'"}'])
    assert status == 413 and "64 KiB" in answer["error"], answer
    status, answer = client.call("/api/sample", {"name": "y" * 5000})  # within the cap: a short echo
    assert status == 400 and answer["error"].startswith("sample: got 'yyy") and len(answer["error"]) < 150, answer
    assert client.call("/api/sample", {"name": "shapes-image"})[0] == 200
    state = client.ask("What is it?", [{"kind": "k" * 5000, "frame": 0}])
    error = state["progress"]["error"]
    assert error.startswith("prompt 0: kind got 'kkk") and len(error) < 150, error


# ---- F6: sessions ---------------------------------------------------------------------------------------------------


def test_page_views_open_no_session(server_demo):
    base, demo = server_demo
    for _ in range(10):
        with urllib.request.urlopen(base + "/") as r:
            assert r.status == 200 and r.headers.get("Set-Cookie") is None
    assert len(demo.store) == 0
    with urllib.request.urlopen(base + "/api/state") as r:  # no cookie: the state of a page without media
        state = json.loads(r.read())
    assert state["media"] is None and state["turns"] == [] and state["limits"]["max_video_frames"] == 30
    assert len(demo.store) == 0


def test_new_sessions_replace_idle_ones_instead_of_being_refused(server_demo):
    base, demo = server_demo
    user = Client(base)
    assert user.call("/api/sample", {"name": "shapes-image"})[0] == 200
    for _ in range(10):  # cookie-less refused uploads: each opens a session without media
        assert Client(base).call("/api/upload?name=x.png", b"junk")[0] == 400
    assert len(demo.store) == 4
    assert user.call("/api/state")[1]["media"]["name"] == "sample: shapes-image"  # media-less ones went first
    for _ in range(6):  # sessions with media: the least recently seen goes, never a refusal
        assert Client(base).call("/api/sample", {"name": "shapes-video"})[0] == 200
    assert len(demo.store) == 4
    status, answer = user.call("/api/state")
    assert status == 401 and "reload the page" in answer["error"]
    user.opener.open(base + "/")  # the reload forgets the ended session; its next sample opens a new one
    status, state = user.call("/api/sample", {"name": "shapes-image"})
    assert status == 200 and user.call("/api/state")[1]["media"]["name"] == "sample: shapes-image"


def test_busy_sessions_are_never_replaced_and_idle_ones_go_media_less_first(tmp_path):
    store = SessionStore(max_sessions=3)
    try:
        a, b, c = store.create(), store.create(), store.create()
        a.progress.running, b.uploading = True, True  # a turn running, an upload being read
        c.media = object()
        assert store.create() is not None and c.sid not in store._sessions  # c was the only idle one
        store._sessions.clear()
        x, y, z = store.create(), store.create(), store.create()
        x.media, z.media = object(), object()
        now = time.monotonic()
        x.last_seen, y.last_seen, z.last_seen = now - 30, now - 10, now - 20
        store.create().media = object()
        assert y.sid not in store._sessions and not y.folder.exists()  # no media goes first, though seen last
        store.create()
        assert x.sid not in store._sessions and z.sid in store._sessions  # then the least recently seen
        for s in store._sessions.values():
            s.progress.running = True
        assert store.create() is None  # all busy: refused, and the limit holds
        assert len(store) == 3
    finally:
        store.close()


# ---- F13: odd JSON, and uploads that race a turn -------------------------------------------------------------------


DEEP = b"[" * 30000 + b"]" * 30000  # nested too deeply to decode, within the 64 KiB cap


@pytest.mark.parametrize(
    "path, body, expected",
    [
        ("/api/sample", json.dumps({"name": ["x"]}).encode(), "sample: got ['x'], expected one of shapes-video, "),
        ("/api/sample", json.dumps({"name": {}}).encode(), "sample: got {}, expected one of shapes-video, "),
        ("/api/sample", DEEP, "request: expected a JSON object"),
        ("/api/sample", b'{"name": ' + b"1" * 5000 + b"}", "request: expected a JSON object"),  # 5000 digits
        ("/api/ask", DEEP, "request: expected a JSON object"),
        ("/api/ask", json.dumps({"text": ["x"]}).encode(), "question: got a list, expected a string (the question"),
    ],
    ids=["sample-list", "sample-object", "sample-deep", "sample-bigint", "ask-deep", "ask-list-text"],
)
def test_odd_json_answers_400_with_one_line(server_demo, path, body, expected):
    base, _ = server_demo
    client = Client(base)
    assert client.call("/api/sample", {"name": "shapes-image"})[0] == 200  # media, so that a question is possible
    status, answer = client.call(path, body)
    assert status == 400 and answer["error"].startswith(expected), answer


def test_an_upload_changes_the_session_only_once_accepted(server_demo, monkeypatch):
    base, demo = server_demo
    client = Client(base)
    first, second = png_bytes(frame_array(0)), png_bytes(frame_array(5))
    assert client.call("/api/upload?name=first.png", first)[0] == 200
    session = session_of(demo)
    seen = []
    real = demo_media.open_upload

    def watched(path, limits):  # what the session shows while the new upload is decoded
        seen.append((session.media_name, session.upload.read_bytes()))
        return real(path, limits)

    monkeypatch.setattr(demo_media, "open_upload", watched)
    status, state = client.call("/api/upload?name=second.png", second)
    assert status == 200 and state["media"]["name"] == "second.png"
    assert seen == [("first.png", first)]  # the media in use stayed itself until the new one was accepted
    assert session.upload.read_bytes() == second and [p.name for p in session.folder.iterdir()] == ["upload.png"]
    session.progress.running = True  # a turn runs: an upload is refused and changes nothing
    try:
        status, answer = client.call("/api/upload?name=third.png", first)
        assert status == 400 and answer["error"] == "upload: a turn is running; wait for it to finish", answer
        assert session.media_name == "second.png" and session.upload.read_bytes() == second
        assert [p.name for p in session.folder.iterdir()] == ["upload.png"]
    finally:
        session.progress.running = False
    assert client.call("/api/state")[1]["media"]["name"] == "second.png"
