"""Mask overlays for humans: masks blended over frames with outlines and `[id]` labels, ground truth and
prediction side by side (enlarged, titled), saved as PNG, GIF or MP4."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FONT = cv2.FONT_HERSHEY_SIMPLEX

# One colour per object slot (RGB); object k gets PALETTE[k % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (  # away from pure red/green/blue/yellow, so masks show on such objects
    (255, 0, 255),
    (0, 255, 255),
    (255, 140, 0),
    (255, 255, 255),
    (140, 90, 255),
    (0, 160, 120),
    (255, 120, 160),
    (128, 128, 128),
)


def _check_frame(frame: np.ndarray, name: str = "frame") -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = f"shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', type(frame).__name__)}"
        raise ValueError(f"{name}: got {got}, expected an (H, W, 3) uint8 RGB array")


def _text_color(color: Sequence[int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R 601 luma), so a label reads on its own badge."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_label(image: np.ndarray, text: str, x: int, y: int, color: Sequence[int], scale: float = 0.45) -> None:
    """Draw `text` on a filled badge of `color` whose top-left corner is near (x, y), kept inside `image` (in place)."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    h, w = image.shape[:2]
    bw, bh = tw + 4, th + base + 4
    x = int(min(max(x, 0), max(w - bw, 0)))
    y = int(min(max(y, 0), max(h - bh, 0)))
    cv2.rectangle(image, (x, y), (x + bw - 1, y + bh - 1), tuple(int(c) for c in color), thickness=-1)
    cv2.putText(image, text, (x + 2, y + th + 1), FONT, scale, _text_color(color), 1, cv2.LINE_AA)


def overlay_masks(
    frame: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    alpha: float = 0.5,
    contour: bool = True,
    colors: Sequence[tuple[int, int, int]] = PALETTE,
    thickness: int = 1,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """`frame` (H, W, 3) uint8 with each (H, W) bool mask blended in its colour: (1 - alpha) * pixel + alpha * colour.

    With `contour`, an outline of `thickness` pixels in the full colour is drawn on top, so small masks stay
    visible. With `labels` (one per mask), each non-empty mask gets its label on a badge of its colour just above
    its bounding box.
    """
    _check_frame(frame)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha}, expected a value in [0, 1]")
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"labels: got {len(labels)}, expected one per mask ({len(masks)})")
    out = frame.astype(np.float32)
    h, w = frame.shape[:2]
    bool_masks = []
    for k, mask in enumerate(masks):
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(f"masks[{k}]: got shape {mask.shape}, expected the frame's (H, W) = {(h, w)}")
        bool_masks.append(mask)
        color = np.asarray(colors[k % len(colors)], dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
    out = np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))  # OpenCV needs C order
    if contour:
        for k, mask in enumerate(bool_masks):
            edges, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            color = tuple(int(c) for c in colors[k % len(colors)])
            # cv2 centres thick lines on the contour; draw inside the mask only so the outline hugs its edge
            cv2.drawContours(out, edges, -1, color, thickness=1)
            for _ in range(thickness - 1):
                mask = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                inner, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(out, inner, -1, color, thickness=1)
    if labels is not None:
        for k, mask in enumerate(bool_masks):
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            (_, th), base = cv2.getTextSize(labels[k], FONT, 0.45, 1)
            top = ys.min() - (th + base + 4)  # above the box when there is room, else inside its top
            draw_label(out, labels[k], int(xs.min()), int(top if top >= 0 else ys.min()), colors[k % len(colors)])
    return out


def overlay_video(
    frames: np.ndarray,
    masks: np.ndarray,
    alpha: float = 0.5,
    contour: bool = True,
    thickness: int = 1,
    labels: Sequence[str] | None = None,
    colors: Sequence[tuple[int, int, int]] = PALETTE,
) -> np.ndarray:
    """Overlay (K, T, H, W) masks on (T, H, W, 3) frames -> (T, H, W, 3) uint8 (options as `overlay_masks`)."""
    frames = np.asarray(frames)
    masks = np.asarray(masks).astype(bool)
    if frames.ndim != 4:
        raise ValueError(f"frames: got shape {frames.shape}, expected (T, H, W, 3)")
    if masks.ndim != 4 or masks.shape[1:] != frames.shape[:3]:
        raise ValueError(f"masks: got shape {masks.shape}, expected (K, T, H, W) with (T, H, W) = {frames.shape[:3]}")
    return np.stack(
        [
            overlay_masks(frames[t], masks[:, t], alpha, contour, colors, thickness=thickness, labels=labels)
            for t in range(len(frames))
        ]
    )


def upscale(frames: np.ndarray, masks: Sequence[np.ndarray], min_side: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Repeat pixels by the smallest integer factor that makes the short side >= `min_side` (masks stay crisp).

    frames (T, H, W, 3), each mask array (K, T, H, W) -> the same shapes with H, W multiplied by the factor.
    """
    factor = max(1, -(-min_side // min(frames.shape[1:3])))
    if factor == 1:
        return frames, list(masks)
    grow = lambda a: a.repeat(factor, axis=-2).repeat(factor, axis=-1)  # noqa: E731  (..., H, W) -> (..., fH, fW)
    return frames.repeat(factor, axis=1).repeat(factor, axis=2), [grow(m) for m in masks]


def titled(frames: np.ndarray, titles: Sequence[str], height: int = 22) -> np.ndarray:
    """(T, H, W, 3) frames with a dark title bar on top holding `titles[t]` -> (T, height + H, W, 3)."""
    out = np.zeros((frames.shape[0], height + frames.shape[1], frames.shape[2], 3), dtype=np.uint8)
    out[:, :height] = 32
    out[:, height:] = frames
    for t, title in enumerate(titles):
        bar = np.ascontiguousarray(out[t, :height])
        cv2.putText(bar, title, (4, height - 7), FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        out[t, :height] = bar
    return out


def side_by_side(*panels: np.ndarray, gap: int = 2) -> np.ndarray:
    """Panels of equal leading shape (..., H, W, 3) joined left to right with a black gap of `gap` pixels."""
    if not panels:
        raise ValueError("panels: got none, expected at least one array")
    shape = panels[0].shape[:-2]
    spacer = np.zeros((*shape, gap, 3), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if p.shape[:-2] != shape:
            raise ValueError(f"panels[{i}]: got shape {p.shape}, expected leading shape {shape} like panels[0]")
        parts += [p, spacer] if i < len(panels) - 1 else [p]
    return np.concatenate(parts, axis=-2)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 RGB array as PNG."""
    _check_frame(image, "image")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


GIF_MIN_DELAY_CS = 4  # 25 fps: GIF delays are whole centiseconds, and viewers slow down delays under 2 cs


def gif_timing(n: int, fps: float, min_delay_cs: int = GIF_MIN_DELAY_CS) -> list[tuple[int, int]]:
    """(frame index, delay in centiseconds) of the frames a GIF of `n` frames at `fps` shows, lasting as long as the
    source (round(100 n / fps) cs, delays adding up to it exactly). Past 100 / `min_delay_cs` fps the GIF shows
    evenly spaced frames at that rate instead of every frame: slot j starts at round(total j / m) cs and shows the
    frame playing then (j n // m)."""
    if n < 1 or not fps > 0:
        raise ValueError(f"n, fps: got {n}, {fps}, expected n >= 1 and fps > 0")
    total = max(1, round(100 * n / fps))
    m = min(n, max(1, total // min_delay_cs))  # frames shown; each for at least min_delay_cs
    starts = [round(total * j / m) for j in range(m + 1)]
    return [(j * n // m, starts[j + 1] - starts[j]) for j in range(m)]


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 4.0) -> Path:
    """Write (H, W, 3) uint8 RGB frames as a looping GIF lasting len(frames) / fps seconds (to the centisecond; above
    25 fps, frames are dropped to keep that duration: `gif_timing`).

    `frames` is any sequence (an array, or one that reads each frame when indexed): only the frames shown are read,
    once each, in order.
    """
    if len(frames) == 0:
        raise ValueError("frames: got 0 frames, expected at least one")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timing = gif_timing(len(frames), fps)

    def image(i: int) -> Image.Image:
        frame = frames[i]
        _check_frame(frame, f"frames[{i}]")
        return Image.fromarray(frame)

    # one RGB image at a time (Pillow iterates append_images): a list held every frame's RGB copy at once
    rest = (image(i) for i, _ in timing[1:])
    # Pillow takes milliseconds and stores int(ms / 10): whole centiseconds in, exactly those out
    durations = [cs * 10 for _, cs in timing]
    image(timing[0][0]).save(path, format="GIF", save_all=True, append_images=rest, duration=durations, loop=0)
    return path


def save_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = 4.0) -> Path:
    """Write (H, W, 3) uint8 RGB frames of one size as an MP4 (mp4v codec of OpenCV); `frames` may be a generator,
    each frame is written as it comes."""
    path = Path(path)
    writer = None
    size = None
    try:
        for t, f in enumerate(frames):
            _check_frame(f, f"frames[{t}]")
            if writer is None:
                size = f.shape[:2]
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
            elif f.shape[:2] != size:  # OpenCV drops frames of another size without a word
                raise ValueError(f"frames[{t}]: got shape {f.shape}, expected the first frame's (H, W) = {size}")
            writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    finally:
        if writer is not None:
            writer.release()
    if writer is None:
        raise ValueError("frames: got 0 frames, expected at least one")
    return path


def compare_panels(
    frames: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray | None,
    ids: Sequence[int] | None = None,
    min_side: int = 256,
) -> np.ndarray:
    """Ground truth (left) and prediction (right) of one sample, outlined, labelled `[id]`, titled, enlarged.

    frames (T, H, W, 3) uint8; pred / target (K, T, H, W) bool, object k labelled `[ids[k]]` (default k + 1) in the
    same colour on both sides. Returns (T, H', W', 3) uint8, the short side of each panel at least `min_side`.
    """
    frames = np.asarray(frames)
    pred = np.asarray(pred).astype(bool)
    ids = list(ids) if ids is not None else list(range(1, pred.shape[0] + 1))
    if len(ids) != pred.shape[0]:
        raise ValueError(f"ids: got {len(ids)}, expected one per predicted object ({pred.shape[0]})")
    labels = [f"[{i}]" for i in ids]
    big, grown = upscale(frames, [pred] + ([np.asarray(target).astype(bool)] if target is not None else []), min_side)
    thickness = max(2, min(big.shape[1:3]) // 128)
    n = len(frames)
    step = [f"frame {t + 1}/{n} | " if n > 1 else "" for t in range(n)]  # first: a long title is clipped at the end

    def panel(masks: np.ndarray, name: str) -> np.ndarray:
        missing = [labels[k] for k in range(len(labels)) if not masks[k].any()]
        note = f" (no mask: {' '.join(missing)})" if missing else ""
        drawn = overlay_video(big, masks, alpha=0.35, thickness=thickness, labels=labels)
        return titled(drawn, [f"{s}{name}{note}" for s in step])

    panels = [panel(grown[0], "prediction")]
    if target is not None:
        panels.insert(0, panel(grown[1], "ground truth"))
    return side_by_side(*panels, gap=4)


def save_overlay(
    frames: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray | None,
    path_stem: str | Path,
    ids: Sequence[int] | None = None,
) -> Path:
    """Ground truth | prediction overlays of one sample (see `compare_panels`): PNG for one frame, GIF for a video.

    frames (T, H, W, 3) uint8; pred / target (K, T, H, W) bool. Returns the written file.
    """
    video = compare_panels(frames, pred, target, ids)  # (T, H', W', 3)
    stem = Path(path_stem)
    if video.shape[0] == 1:
        return save_png(video[0], stem.with_suffix(".png"))
    return save_gif(video, stem.with_suffix(".gif"))
