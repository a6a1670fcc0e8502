"""Browser sessions: a random id in a cookie, a temporary folder each, removed when the page ends or goes idle.

A session is opened by the first request that needs one (an upload or a sample), not by a page view. When
`max_sessions` are open, a new one takes the place of the least recently seen session that is not busy (no turn
running, no upload being read), sessions without media first; only when every session is busy is it refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from pixelqa.files import pid_alive
from pixelqa.predict.media import Media
from pixelqa.predict.predictor import Prediction


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another libc, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_memory() -> bool:
    """Give the heap's free pages back to the system (glibc `malloc_trim(0)`); False where there is none.

    A turn frees hundreds of MB of tensors of varying sizes; glibc keeps such freed pages in its arenas, so without
    this the server's RSS ratchets up with every turn although nothing is referenced any more.
    """
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


@dataclass
class Progress:
    """What a running turn is doing, for the page's progress line."""

    phase: str = ""
    started: float = 0.0
    running: bool = False
    error: str = ""
    done: int = 0  # SAM frames decoded so far in this turn, of `total` (0: not reported)
    total: int = 0


@dataclass(frozen=True)
class Turn:
    """What the page needs of an earlier turn: its texts and answer (its overlays and files stay in `folder`).

    A session keeps the full `Prediction` (masks, memory bank, model state) of its latest turn only: the next turn
    continues from it, and every turn's images and downloads are served from its folder on disk.
    """

    turn: int  # 1-based
    asked: str  # the question as typed
    text: str  # the user text with its <|ref|> placed
    model_text: str  # the user text as fed to the model
    answer: str
    folder: Path


@dataclass
class Session:
    """One browser session's state; `folder` holds its upload and every turn's outputs."""

    sid: str
    folder: Path
    last_seen: float
    media: Media | None = None
    media_name: str = ""
    upload: Path | None = None
    turns: list[Turn] = field(default_factory=list)  # every turn, as text (its files are in its folder)
    latest: Prediction | None = None  # the latest turn's full result (tensors), which the next turn continues
    progress: Progress = field(default_factory=Progress)
    uploading: bool = False  # an upload of this session is being received or decoded
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def turn_dir(self, turn: int) -> Path:
        """The outputs folder of turn `turn` (1-based)."""
        return self.folder / f"turn{turn}"

    def add_turn(self, pred: Prediction, asked: str) -> None:
        """Record a finished turn: its full result replaces the previous turn's, which is kept as text only."""
        self.turns.append(Turn(pred.turn, asked, pred.text, pred.model_text, pred.answer, self.turn_dir(pred.turn)))
        self.latest = pred

    @property
    def busy(self) -> bool:
        """A turn is running or an upload is being read: the session is neither reaped nor evicted."""
        return self.progress.running or self.uploading

    def reset(self) -> None:
        """Forget the conversation and its outputs (the media stays)."""
        for t in range(1, len(self.turns) + 1):
            shutil.rmtree(self.turn_dir(t), ignore_errors=True)
        self.turns, self.latest = [], None
        self.progress = Progress()


def _drop(session: Session) -> None:
    """Let an ended session's tensors go (a request or a turn may still hold the object) and trim the heap."""
    session.latest = None
    trim_memory()


ROOT_PREFIX = "pixelqa-demo-"
OWNER_FILE = "owner.pid"  # in each root: the id of the process serving it


def sweep_stale_roots(tmp: str | os.PathLike | None = None) -> list[Path]:
    """Remove the session roots (`pixelqa-demo-*` in the temp folder) of this user whose demo process is gone.

    A demo killed hard (kill -9, a crash) cannot remove its root, and the uploads in it would stay; each root names
    its process in `owner.pid`. Roots of other users, roots without that file and roots of a live process stay.
    """
    removed, uid = [], os.getuid() if hasattr(os, "getuid") else None
    for root in Path(tmp or tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            if root.is_symlink() or not root.is_dir() or (uid is not None and root.stat().st_uid != uid):
                continue
            pid = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):  # not ours, no owner file (or one being written), not a number
            continue
        if pid > 0 and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


class SessionStore:
    """Sessions under one private root folder; at most `max_sessions` (the least recently seen idle one makes way
    for a new one), each removed after `idle_s` unseen."""

    def __init__(self, max_sessions: int = 8, idle_s: float = 1800.0) -> None:
        sweep_stale_roots()  # the uploads a killed demo left behind
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))  # mode 0700: other users cannot read uploads
        (self.root / OWNER_FILE).write_text(f"{os.getpid()}\n")
        # the root goes at interpreter exit too, when the store is not closed (the demo embedded in a program)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self) -> Session | None:
        """A new session (idle ones reaped first); when `max_sessions` are open, the least recently seen session
        that is not busy is ended to make room (one without media first). None when every open session is busy."""
        self.reap()
        evicted = None
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                idle = [s for s in self._sessions.values() if not s.busy]
                if not idle:
                    return None
                evicted = min(idle, key=lambda s: (s.media is not None, s.last_seen))
                del self._sessions[evicted.sid]
            sid = secrets.token_urlsafe(24)
            folder = self.root / secrets.token_hex(8)  # not derived from the cookie: the id never names a path
            folder.mkdir(mode=0o700)
            session = Session(sid, folder, time.monotonic())
            self._sessions[sid] = session
        if evicted is not None:
            shutil.rmtree(evicted.folder, ignore_errors=True)
            _drop(evicted)
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value (its idle clock restarted), or None."""
        with self._lock:
            session = self._sessions.get(sid or "")
            if session is not None:
                session.last_seen = time.monotonic()
            return session

    def end(self, sid: str | None) -> bool:
        """Remove a session and its folder; False when there was none."""
        with self._lock:
            session = self._sessions.pop(sid or "", None)
        if session is None:
            return False
        shutil.rmtree(session.folder, ignore_errors=True)
        _drop(session)
        return True

    def reap(self) -> int:
        """Remove sessions unseen for `idle_s` (not while busy); returns how many."""
        now = time.monotonic()
        with self._lock:
            old = [s.sid for s in self._sessions.values() if now - s.last_seen > self.idle_s and not s.busy]
        return sum(self.end(sid) for sid in old)

    def close(self) -> None:
        """Remove every session and the root folder (server shutdown)."""
        with self._lock:
            self._sessions.clear()
        self._cleanup()  # removes the root (once)

    def __len__(self) -> int:
        return len(self._sessions)
