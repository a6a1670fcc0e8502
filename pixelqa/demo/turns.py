"""One demo turn: the page's prompts -> predict's prompts, the Predictor, its outputs, memory thumbnails, a zip.

The page sends prompts in pixels of the media on a position among the frames read (the frame slider); they go
through predict's own parsing, checks and normalisation (`PromptSpec`, `check_prompts`, `model_prompts`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import inspect
import queue
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelqa import viz
from pixelqa.demo.messages import json_kind, shown
from pixelqa.demo.sessions import Session, trim_memory
from pixelqa.files import atomic_file
from pixelqa.model.chat import ContextTooLongError
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.outputs import write_outputs
from pixelqa.predict.predictor import Prediction, Predictor
from pixelqa.predict.prompts import PromptSpec, check_prompts, model_prompts

THUMB = 96  # side of a memory thumbnail, pixels
MAX_PROMPTS = 16
MAX_QUESTION_CHARS = 2000


def _field(d: dict, key: str, kind: str, i: int) -> float:
    """A number field of prompt i, or the error naming it."""
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PredictInputError(f"prompt {i} ({kind}): {key} got {shown(value)}, expected a number of pixels")
    return float(value)


def page_prompts(items: Any, session: Session) -> list[PromptSpec]:
    """PromptSpecs (original frame indices) of the page's prompts; masks (PNG data) saved in the session folder."""
    media = session.media
    if not isinstance(items, list) or len(items) > MAX_PROMPTS:
        raise PredictInputError(f"prompts: expected a list of at most {MAX_PROMPTS} points, boxes or masks")
    specs = []
    for i, d in enumerate(items):
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind not in ("point", "box", "mask"):
            raise PredictInputError(f"prompt {i}: kind got {shown(kind)}, expected point, box or mask")
        pos = d.get("frame")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < len(media.frame_ids):
            raise PredictInputError(f"prompt {i}: frame got {shown(pos)}, expected 0..{len(media.frame_ids) - 1}")
        frame = media.frame_ids[pos]
        if kind == "mask":
            path = session.folder / f"prompt{len(session.turns) + 1}_{i}.png"
            path.write_bytes(_png_bytes(d.get("png"), i))
            specs.append(PromptSpec("mask", f"mask {i}", (), frame, mask_path=str(path)))
            continue
        keys = ("x", "y") if kind == "point" else ("x1", "y1", "x2", "y2")
        coords = tuple(_field(d, k, kind, i) for k in keys)
        specs.append(PromptSpec(kind, ",".join(f"{c:.0f}" for c in coords) + f" on frame {pos}", coords, frame))
    return check_prompts(specs, media.info)


def _png_bytes(data: Any, i: int) -> bytes:
    """The bytes of a `data:image/png;base64,...` mask drawn on the page."""
    prefix = "data:image/png;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        raise PredictInputError(f"prompt {i} (mask): expected a PNG data URL of the drawn mask")
    try:
        return base64.b64decode(data[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        raise PredictInputError(f"prompt {i} (mask): the PNG data is not valid base64") from None


def thumbnail(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(THUMB, THUMB, 3) crop of the frame where the object is largest, around it, the rest darkened."""
    area = mask.reshape(mask.shape[0], -1).sum(1)
    t = int(area.argmax())
    frame, m = frames[t].astype(np.float32), mask[t]
    if m.any():
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        pad = max(y1 - y0, x1 - x0) // 4 + 2  # some context around the object
        h, w = m.shape
        y0, y1, x0, x1 = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
        frame = np.where(m[..., None], frame, frame * 0.35)[y0:y1, x0:x1]
    im = Image.fromarray(frame.clip(0, 255).astype(np.uint8))
    scale = THUMB / max(im.size)  # small crops grow (crisp pixels), large ones shrink
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    square = Image.new("RGB", (THUMB, THUMB))
    square.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return np.asarray(square)


def _zip_pngs(src: Path, dest: Path) -> None:
    """Zip every PNG under `src` (paths relative to it) into `dest`, atomically."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(src.rglob("*.png")):
                zf.write(f, f.relative_to(src).as_posix())

    atomic_file(dest, write)


def sam_progress(session: Session, predictor: Predictor, history: Prediction | None) -> dict[str, Any]:
    """Keyword arguments of `Predictor.run` that make SAM report its frames on the session's progress line.

    The model takes a `progress(done, total)` callback and keeps it in the conversation's state; a Predictor whose
    `run` has no `progress` argument yet reaches it through that state from the second turn on.
    """

    def on_frame(done: int, total: int) -> None:
        session.progress.done, session.progress.total = int(done), int(total)

    if "progress" in inspect.signature(predictor.run).parameters:
        return {"progress": on_frame}
    if history is not None and hasattr(history.state, "progress"):
        history.state.progress = on_frame
    return {}


def run_turn(
    session: Session, predictor: Predictor, text: str, items: Any, model_lock: threading.Lock
) -> dict[str, Any]:
    """Check the prompts, run one turn on the model, write its outputs in the session folder; returns run.json."""
    progress = session.progress
    if session.media is None:
        raise PredictInputError("upload: no image or video yet; upload one or pick a sample first")
    if text is not None and not isinstance(text, str):
        raise PredictInputError(f"question: got {json_kind(text)}, expected a string (the question or instruction)")
    if not text or not text.strip():
        raise PredictInputError("question: got an empty text, expected a question or instruction")
    if len(text) > MAX_QUESTION_CHARS:  # a page's question, not a document: it would fill the model's context
        raise PredictInputError(f"question: got {len(text)} characters, expected at most {MAX_QUESTION_CHARS}")
    specs = page_prompts(items, session)
    media = session.media
    # ids are left to the Predictor: the next free ones after the memory bank's
    prompts = [dataclasses.replace(p, object_id=None) for p in model_prompts(specs, media.info, media.frame_ids)]
    history = session.latest
    n = len(media.frame_ids)
    progress.phase = "waiting for the model (another session is using it)"
    with model_lock:
        progress.phase = f"running the model: answering and propagating masks through {n} frame(s)"
        try:
            pred: Prediction = predictor.run(
                media if history is None else None, text, prompts, history, **sam_progress(session, predictor, history)
            )
        except PredictInputError as exc:
            if isinstance(exc.__cause__, ContextTooLongError):  # the user's to fix: reset, or upload again
                raise PredictInputError(f"{exc.__cause__} (reset the conversation)") from None
            raise
    if not session.folder.is_dir():  # the page ended while the model ran: write nothing (it would recreate it)
        return {}
    progress.phase = "writing masks and overlays"
    out = session.turn_dir(pred.turn)
    run = write_outputs(pred, out)
    frames = media.frames.permute(0, 2, 3, 1).numpy()  # (T, 3, H, W) -> (T, H, W, 3)
    for k, m in pred.memory.items():
        viz.save_png(thumbnail(frames, m.numpy()), out / "thumbs" / f"{k}.png")
    _zip_pngs(out / "Annotations", out / "masks_png.zip")
    session.add_turn(pred, text)  # the previous turn's tensors go: only the latest turn's are kept
    return run


class TurnWorker:
    """One long-lived (daemon) thread that runs every turn, one after the other, trimming the heap after each.

    A fresh thread per turn makes glibc hand each one its own malloc arena, whose freed pages stay with the process:
    the server's RSS grew by MBs per turn. One thread reuses one arena, and `trim_memory` returns its free pages.
    """

    def __init__(self, name: str = "demo-turns") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job` (it must not raise) to run on the worker thread, started on the first job."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            finally:
                del job  # the turn's tensors go before the trim
                trim_memory()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread after the queued jobs (waiting at most `timeout` seconds for them)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)


def run_in_background(
    session: Session,
    predictor: Predictor,
    text: str,
    items: Any,
    model_lock: threading.Lock,
    on_error: Callable[[BaseException], str],
    worker: TurnWorker,
) -> None:
    """Queue `run_turn` on `worker`; its progress and error (through `on_error(exc) -> str`) land on the session."""
    progress = session.progress
    progress.running, progress.error, progress.started = True, "", time.monotonic()
    progress.done = progress.total = 0
    progress.phase = "waiting for the model (another session is using it)"

    def work() -> None:
        try:
            with session.lock:
                run_turn(session, predictor, text, items, model_lock)
        except Exception as exc:  # noqa: BLE001  (every failure becomes a message on the page; on_error logs bugs)
            progress.error = on_error(exc)
        finally:
            progress.running, progress.phase = False, ""

    worker.submit(work)
