"""Browser sessions: a random id in a cookie, a temporary folder each, removed when the page ends or goes idle.

A session is opened by the first request that needs one (an upload or a sample), not by a page view. When
`max_sessions` are open, a new one takes the place of the least recently seen session that is not busy (no turn
running, no upload being read), sessions without media first; only when every session is busy is it refused.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pixelqa.predict.media import Media
from pixelqa.predict.predictor import Prediction


@dataclass
class Progress:
    """What a running turn is doing, for the page's progress line."""

    phase: str = ""
    started: float = 0.0
    running: bool = False
    error: str = ""
    done: int = 0  # SAM frames decoded so far in this turn, of `total` (0: not reported)
    total: int = 0


@dataclass
class Session:
    """One browser session's state; `folder` holds its upload and every turn's outputs."""

    sid: str
    folder: Path
    last_seen: float
    media: Media | None = None
    media_name: str = ""
    upload: Path | None = None
    turns: list[Prediction] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # each turn's question as typed
    progress: Progress = field(default_factory=Progress)
    uploading: bool = False  # an upload of this session is being received or decoded
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def turn_dir(self, turn: int) -> Path:
        """The outputs folder of turn `turn` (1-based)."""
        return self.folder / f"turn{turn}"

    @property
    def busy(self) -> bool:
        """A turn is running or an upload is being read: the session is neither reaped nor evicted."""
        return self.progress.running or self.uploading

    def reset(self) -> None:
        """Forget the conversation and its outputs (the media stays)."""
        for t in range(1, len(self.turns) + 1):
            shutil.rmtree(self.turn_dir(t), ignore_errors=True)
        self.turns, self.texts = [], []
        self.progress = Progress()


class SessionStore:
    """Sessions under one private root folder; at most `max_sessions` (the least recently seen idle one makes way
    for a new one), each removed after `idle_s` unseen."""

    def __init__(self, max_sessions: int = 8, idle_s: float = 1800.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pixelqa-demo-"))  # mode 0700: other users cannot read uploads
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
        shutil.rmtree(self.root, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._sessions)
