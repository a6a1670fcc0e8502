"""The demo's long-run hygiene: a session keeps the tensors of its latest turn only, turns run on one worker thread
with the heap trimmed after each, a too long conversation is one line, a killed demo's session roots are swept."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import types

import pytest
import torch
from test_demo_api import Client, png_bytes, running_demo, session_of
from test_predict_units import frame_array

import pixelqa.demo.turns as turns_module
from pixelqa.demo import sessions as sessions_module
from pixelqa.predict.predictor import Prediction


def held(root: object) -> tuple[list[Prediction], int]:
    """The Predictions reachable from `root` and the bytes of the distinct tensor storages reachable from it."""
    seen, stack, preds, storages = set(), [root], [], {}
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, Prediction):
            preds.append(obj)
        if isinstance(obj, torch.Tensor):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
            continue
        stack.extend(gc.get_referents(obj))
    return preds, sum(storages.values())


def test_a_session_keeps_the_tensors_of_its_latest_turn_only_and_serves_every_turn():
    with running_demo() as (base, demo):
        client = Client(base)
        status, state = client.call("/api/upload?name=shot.png", png_bytes(frame_array(0)))
        assert status == 200, state
        state = client.ask("What is it?", [{"kind": "point", "frame": 0, "x": 24, "y": 12}])
        session = session_of(demo)
        one_turn = held(session)[1]
        questions = ["What is [0] next to?", "Where is [0]?", "Is [0] large?", "What color is [0]?"]
        for q in questions:
            state = client.ask(q, [])
            assert not state["progress"]["error"], state["progress"]
        n = 1 + len(questions)
        assert state["latest"] == n and [t["text"] for t in state["turns"]] == ["What is it?", *questions]
        preds, nbytes = held(session)
        assert preds == [session.latest] and session.latest.turn == n  # one Prediction: the latest turn's
        assert nbytes < 1.5 * one_turn, (nbytes, one_turn)  # not one set of masks per turn
        assert [t.turn for t in session.turns] == list(range(1, n + 1))
        # every turn's overlay and thumbnails are still served, from its folder on disk
        for t in range(1, n + 1):
            status, data = client.call(f"/api/overlay/{t}/0", raw=True)
            assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n", t
            status, data = client.call(f"/api/thumb/{t}/0", raw=True)
            assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n", t
        for what in ("masks.json", "masks.zip", "overlay"):
            assert client.call(f"/api/download/{what}", raw=True)[0] == 200
        assert client.call("/api/reset", {})[1]["turns"] == [] and session.latest is None


def test_turns_run_on_one_worker_thread_and_the_heap_is_trimmed_after_each(monkeypatch):
    threads, trims = [], []
    real = turns_module.run_turn

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(turns_module, "run_turn", recording)
    monkeypatch.setattr(turns_module, "trim_memory", lambda: trims.append(len(threads)))
    monkeypatch.setattr(sessions_module, "trim_memory", lambda: trims.append("end"))
    with running_demo() as (base, demo):
        for _ in range(2):  # two pages, one after the other: a new session each
            client = Client(base)
            assert client.call("/api/upload?name=a.png", png_bytes(frame_array(1)))[0] == 200
            for q in ("What is <|ref|>?", "And [0]?"):
                prompts = [{"kind": "point", "frame": 0, "x": 9, "y": 9}] if "ref" in q else []
                assert not client.ask(q, prompts)["progress"]["error"]
            assert client.call("/api/end", {})[0] == 200
    assert len(threads) == 4 and all(t is threads[0] for t in threads), threads  # one long-lived thread
    assert threads[0] is not threading.main_thread()
    assert [t for t in trims if t != "end"] == [1, 2, 3, 4] and trims.count("end") == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_trim_memory_calls_glibc_malloc_trim():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert sessions_module.trim_memory() is True


def test_a_conversation_too_long_for_the_model_is_one_line_on_the_page(monkeypatch):
    with running_demo() as (base, demo):
        client = Client(base)
        assert client.call("/api/upload?name=a.png", png_bytes(frame_array(2)))[0] == 200
        assert not client.ask("What is <|ref|>?", [{"kind": "point", "frame": 0, "x": 9, "y": 9}])["progress"]["error"]
        monkeypatch.setattr(demo.predictor.model.qwen.config.text_config, "max_position_embeddings", 64)
        error = client.ask("And [0]?", [])["progress"]["error"]
        assert error.startswith("conversation too long: 1 earlier turn(s) make a prompt of"), error
        assert "start a new conversation" in error and "\n" not in error and "Traceback" not in error


def test_stale_session_roots_of_dead_demos_are_removed_at_startup(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(sessions_module.tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is gone (reaped)
    stale = tmp_path / "pixelqa-demo-stale"
    (stale / "0123abcd").mkdir(parents=True)
    (stale / "0123abcd" / "upload.mp4").write_bytes(b"user video")
    (stale / "owner.pid").write_text(f"{dead.pid}\n")
    live = tmp_path / "pixelqa-demo-live"
    live.mkdir()
    (live / "owner.pid").write_text(f"{os.getppid()}\n")  # a live process (the test runner's parent)
    unknown = tmp_path / "pixelqa-demo-unknown"  # no owner file: not known to be stale, kept
    unknown.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    store = sessions_module.SessionStore()
    try:
        assert store.root.parent == tmp_path and (store.root / "owner.pid").read_text() == f"{os.getpid()}\n"
        assert not stale.exists() and live.is_dir() and unknown.is_dir() and other.is_dir()
        # a second store of this live process keeps the first's root
        second = sessions_module.SessionStore()
        assert store.root.is_dir()
        second.close()
        assert not second.root.exists()
    finally:
        store.close()
    assert not store.root.exists()


def test_a_store_not_closed_is_removed_at_interpreter_exit(tmp_path):
    code = (
        "from pixelqa.demo.sessions import SessionStore\n"
        "s = SessionStore(); s.create(); (s.root / 'x').write_text('upload')\n"
        "print(s.root)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    root = out.stdout.strip()
    assert root.startswith(str(tmp_path)) and not os.path.exists(root)
    assert list(tmp_path.glob("pixelqa-demo-*")) == []
