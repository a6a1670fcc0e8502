"""The demo's HTTP side (Starlette): the page, its JSON API and the session's images and downloads.

Every route works on the caller's session (an HttpOnly cookie); files are served from the session folder by
fixed names, never by a path from the request. User errors answer 400 with one line; anything else is logged
here and answers a generic message, so no exception or server path reaches the page.

Viewing the page opens no session: an upload or a sample does (and sets the cookie); until then the API answers
as for a session without media. JSON bodies are capped (`JSON_MAX`, `ASK_MAX`: Content-Length first, then while
read), and an upload is probed and decoded in a worker thread, so one page's file never stalls the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pixelqa.demo import media as demo_media
from pixelqa.demo.messages import INTERNAL, display_name, json_kind, user_message
from pixelqa.demo.sessions import Session, SessionStore
from pixelqa.demo.turns import TurnWorker, run_in_background
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.predictor import Predictor

COOKIE = "pixelqa_demo"
STATIC = Path(__file__).parent / "static"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
DRAIN = 64 * 2**20  # bytes past the upload cap read and dropped before answering (see upload)
JSON_MAX = 64 * 2**10  # bytes of a JSON body (a sample's name)
ASK_MAX = 8 * 2**20  # bytes of a question's body: its drawn masks travel in it as PNG data
log = logging.getLogger("pixelqa.demo")


class BodyTooLarge(PredictInputError):
    """A request body over its cap (answered 413)."""

    status = 413


class Demo:
    """The state the routes share: the predictor, the sessions, the caps and the one-turn-at-a-time model lock."""

    def __init__(self, predictor: Predictor, limits: demo_media.Limits, store: SessionStore) -> None:
        self.predictor = predictor
        self.limits = limits
        self.store = store
        self.model_lock = threading.Lock()
        self.worker = TurnWorker()  # every turn runs on its one thread (see TurnWorker)

    def message(self, exc: BaseException, session: Session | None, names: dict[str, str] | None = None) -> str:
        """The page's message for a failure: a user error without server paths (`names`: more paths and what to
        show for them), or the generic one (logged)."""
        if isinstance(exc, PredictInputError):
            swap = {str(self.store.root): "(server)", **(names or {})}
            if session is not None:
                swap[str(session.folder)] = "(session)"
                if session.upload is not None:
                    swap[str(session.upload)] = session.media_name or "upload"
                for p in session.folder.glob("prompt*.png"):
                    swap[str(p)] = "the drawn mask"
            return user_message(exc, swap)
        log.exception("demo: internal error")
        return INTERNAL


def _error(text: str, status: int = 400) -> JSONResponse:
    """A JSON error the page shows as one line."""
    return JSONResponse({"error": text}, status_code=status, headers=HEADERS)


def _status(exc: BaseException) -> int:
    """The HTTP status of a failure: a user error's (400 unless it says), else 500."""
    return getattr(exc, "status", 400) if isinstance(exc, PredictInputError) else 500


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object, at most `limit` bytes: refused by its Content-Length before a byte is read, and
    while read when it has none or it lies."""
    too_large = BodyTooLarge(f"request: the body is over {limit // 1024} KiB; expected at most that much JSON")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), too deeply nested, an integer of 5000 digits
        data = None
    if not isinstance(data, dict):
        raise PredictInputError("request: expected a JSON object")
    return data


def state(demo: Demo, s: Session) -> dict[str, Any]:
    """What the page shows: media, conversation, memory bank, downloads, progress, caps."""
    p = s.progress
    out: dict[str, Any] = {
        "media": None,
        "turns": [{"text": t.asked, "answer": t.answer} for t in s.turns],
        "memory": [],
        "latest": len(s.turns),
        "progress": {
            "running": p.running,
            "phase": p.phase,
            "elapsed": round(time.monotonic() - p.started, 1) if p.running else 0.0,
            "error": p.error,
            "done": p.done,
            "total": p.total,
        },
        "samples": list(demo_media.SAMPLES),
        "limits": {"max_mib": demo.limits.max_bytes // 2**20, "max_video_frames": demo.limits.max_video_frames},
    }
    if s.media is not None:
        m = s.media
        out["media"] = {
            "name": s.media_name,
            "kind": m.kind,
            "frames": len(m.frame_ids),
            "size": list(m.size),
            "names": m.names,
            "fps": m.info.fps or 4.0,
            "llm_positions": s.latest.llm_positions if s.latest is not None else None,
        }
    if s.latest is not None:
        last = s.latest
        n = len(s.turns)
        for k, mask in last.memory.items():
            seen = [t for t in range(mask.shape[0]) if bool(mask[t].any())]
            names = s.media.names
            span = f"frames {names[seen[0]]}..{names[seen[-1]]}" if seen else "no mask"
            out["memory"].append(
                {
                    "id": k,
                    "frames": f"{span} ({len(seen)}/{mask.shape[0]})",
                    "thumb": f"/api/thumb/{n}/{k}",
                    "new": k in last.masks,
                }
            )
        video = s.turn_dir(n).joinpath("overlay.mp4").is_file()
        out["downloads"] = {
            "json": "/api/download/masks.json",
            "zip": "/api/download/masks.zip",
            "overlay": "/api/download/overlay",
            "overlay_kind": "mp4" if video else "png",
        }
    return out


def png(rgb: np.ndarray) -> bytes:
    """The PNG bytes of (H, W, 3) uint8 pixels."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def build_app(demo: Demo, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app of the demo; requests naming another Host than `allowed_hosts` (default: loopback names)
    are refused, so that a web site whose name resolves to 127.0.0.1 cannot drive the local demo."""

    def session_of(request: Request) -> Session | None:
        return demo.store.get(request.cookies.get(COOKIE))

    def with_session(handler, create: bool = False):
        """The route calling `handler(request, session)`. Without a cookie, a route that makes a session (`create`:
        upload, sample; also after the cookie's session ended) opens one and sets the cookie; the others get a
        blank session that is not stored (no media, no turns), so they answer as for a new page. A cookie whose
        session ended answers 401 there: the page is out of date."""

        async def route(request: Request) -> Response:
            cookie = request.cookies.get(COOKIE)
            s, created = demo.store.get(cookie), False
            if s is None and create:
                s, created = demo.store.create(), True
                if s is None:
                    return _error("session: every session of the demo is busy; try again in a few minutes", 503)
            elif s is None and cookie:
                return _error("session: this page's session has ended; reload the page", 401)
            elif s is None:
                s = Session("", demo.store.root / "no-session", 0.0)  # never stored: nothing is written for it
            try:
                response = await handler(request, s)
            except Exception as exc:  # noqa: BLE001  (one line on the page, details only in the server log)
                response = _error(demo.message(exc, s), _status(exc))
            if created:
                response.set_cookie(COOKIE, s.sid, httponly=True, samesite="strict", path="/")
            return response

        return route

    async def index(request: Request) -> Response:
        page = FileResponse(STATIC / "index.html", headers=HEADERS)
        if request.cookies.get(COOKIE) and session_of(request) is None:  # its session ended: start afresh
            page.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return page

    async def get_state(request: Request, s: Session) -> Response:
        return JSONResponse(state(demo, s), headers=HEADERS)

    def load(s: Session, media, name: str, incoming: Path | None) -> None:
        """Make `media` the session's (its conversation forgotten); an upload's file moves from `incoming` to
        `upload<suffix>`. Until here nothing of the session changed, so a refused upload leaves it as it was."""
        if s.progress.running:
            raise PredictInputError("upload: a turn is running; wait for it to finish")
        s.reset()
        for old in s.folder.glob("upload*"):
            old.unlink(missing_ok=True)
        upload = None
        if incoming is not None:
            upload = incoming.with_name(f"upload{incoming.suffix}")  # a fixed name, like incoming's
            incoming.replace(upload)
            media.info = dataclasses.replace(media.info, path=str(upload))
        s.media, s.media_name, s.upload = media, name, upload

    async def receive(request: Request, path: Path) -> int:
        """Write the request's body to `path` up to the byte cap; returns its size (past the cap the rest is read
        and dropped, up to DRAIN, so that the browser, still sending, gets the message, not a reset connection)."""
        size = 0
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > demo.limits.max_bytes + DRAIN:
                    break
                if size <= demo.limits.max_bytes:
                    f.write(chunk)
        return size

    async def upload(request: Request, s: Session) -> Response:
        name = display_name(request.query_params.get("name"))
        suffix = demo_media.upload_suffix(name)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > demo.limits.max_bytes + DRAIN:
            demo_media.check_size(int(declared), demo.limits)  # far too large: refused before reading a byte
        if s.uploading:
            raise PredictInputError("upload: another upload of this page is still being read; wait for it")
        # a fixed name (the user's never reaches the file system), apart from the media in use until it is accepted
        path = s.folder / f"incoming{suffix}"
        s.uploading = True
        try:
            size = await receive(request, path)
            demo_media.check_size(size, demo.limits)
            if size == 0:
                raise PredictInputError(f"upload: {name!r} is empty")
            if s.progress.running:  # refused before its decoding, and again when loaded (a turn may start meanwhile)
                raise PredictInputError("upload: a turn is running; wait for it to finish")
            media = await run_in_threadpool(demo_media.open_upload, path, demo.limits)  # blocking: off the loop
            if not s.folder.is_dir():
                return _error("session: this page's session has ended; reload the page", 401)
            load(s, media, name, path)
        except Exception as exc:  # noqa: BLE001  (the message is made while the upload's name is known)
            path.unlink(missing_ok=True)
            return _error(demo.message(exc, s, {str(path): name}), _status(exc))
        finally:
            s.uploading = False
        return JSONResponse(state(demo, s), headers=HEADERS)

    async def sample(request: Request, s: Session) -> Response:
        name = (await read_json(request, JSON_MAX)).get("name")
        media = await run_in_threadpool(demo_media.sample_media, name)
        load(s, media, f"sample: {name}", None)
        return JSONResponse(state(demo, s), headers=HEADERS)

    async def ask(request: Request, s: Session) -> Response:
        data = await read_json(request, ASK_MAX)
        if s.progress.running:
            raise PredictInputError("question: a turn is running; wait for it to finish")
        if s.media is None:
            raise PredictInputError("upload: no image or video yet; upload one or pick a sample first")
        text = data.get("text")
        if text is not None and not isinstance(text, str):
            raise PredictInputError(f"question: got {json_kind(text)}, expected a string (the question or instruction)")
        run_in_background(
            s,
            demo.predictor,
            data.get("text"),
            data.get("prompts", []),
            demo.model_lock,
            lambda e: demo.message(e, s),
            demo.worker,
        )
        return JSONResponse(state(demo, s), status_code=202, headers=HEADERS)

    async def reset(request: Request, s: Session) -> Response:
        if s.progress.running:
            raise PredictInputError("reset: a turn is running; wait for it to finish")
        s.reset()
        return JSONResponse(state(demo, s), headers=HEADERS)

    async def end(request: Request) -> Response:
        demo.store.end(request.cookies.get(COOKIE))
        return JSONResponse({"ended": True}, headers=HEADERS)

    def position(s: Session, request: Request) -> int:
        pos = request.path_params["pos"]
        if s.media is None or not 0 <= pos < len(s.media.frame_ids):
            raise PredictInputError(f"frame: got {pos}, expected a frame of the media")
        return pos

    def turn_dir(s: Session, request: Request) -> Path:
        turn = request.path_params["turn"]
        if not 1 <= turn <= len(s.turns):
            raise PredictInputError(f"turn: got {turn}, expected 1..{len(s.turns)}")
        return s.turn_dir(turn)

    async def frame(request: Request, s: Session) -> Response:
        pos = position(s, request)  # first: it refuses a session without media (s.media is None)
        rgb = s.media.frames[pos].permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
        return Response(await run_in_threadpool(png, rgb), media_type="image/png", headers=HEADERS)

    async def overlay(request: Request, s: Session) -> Response:
        folder, pos = turn_dir(s, request), position(s, request)
        return FileResponse(folder / "overlays" / f"{s.media.names[pos]}.png", headers=HEADERS)

    async def thumb(request: Request, s: Session) -> Response:
        path = turn_dir(s, request) / "thumbs" / f"{request.path_params['k']}.png"
        if not path.is_file():
            raise PredictInputError(f"object: [{request.path_params['k']}] is not in memory")
        return FileResponse(path, headers=HEADERS)

    async def download(request: Request, s: Session) -> Response:
        if not s.turns:
            raise PredictInputError("download: nothing yet; ask a question first")
        folder = s.turn_dir(len(s.turns))
        what = request.path_params["what"]
        files = {"masks.json": "masks.json", "masks.zip": "masks_png.zip"}
        if what == "overlay":
            video = folder / "overlay.mp4"
            path = video if video.is_file() else folder / "overlays" / f"{s.media.names[0]}.png"
            name = "overlay.mp4" if video.is_file() else "overlay.png"
        elif what in files:
            path, name = folder / files[what], what
        else:
            raise PredictInputError(f"download: got {what!r}, expected masks.json, masks.zip or overlay")
        return FileResponse(path, filename=f"pixelqa_turn{len(s.turns)}_{name}", headers=HEADERS)

    async def reaper() -> None:
        while True:
            await asyncio.sleep(min(60.0, demo.store.idle_s))
            demo.store.reap()

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()
            demo.worker.close(timeout=5.0)  # a running turn is not waited for longer (its thread is a daemon)
            demo.store.close()  # the uploads of every session go with the server

    routes = [
        Route("/", index),
        Route("/api/state", with_session(get_state)),
        Route("/api/upload", with_session(upload, create=True), methods=["POST"]),
        Route("/api/sample", with_session(sample, create=True), methods=["POST"]),
        Route("/api/ask", with_session(ask), methods=["POST"]),
        Route("/api/reset", with_session(reset), methods=["POST"]),
        Route("/api/end", end, methods=["POST"]),
        Route("/api/frame/{pos:int}", with_session(frame)),
        Route("/api/overlay/{turn:int}/{pos:int}", with_session(overlay)),
        Route("/api/thumb/{turn:int}/{k:int}", with_session(thumb)),
        Route("/api/download/{what}", with_session(download)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    hosts = allowed_hosts or LOOPBACK_NAMES
    return Starlette(
        debug=False,
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)],
    )
