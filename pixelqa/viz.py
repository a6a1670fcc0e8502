"""Mask overlays for humans: predicted (and ground-truth) masks blended over frames, saved as PNG, GIF or MP4."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

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


def overlay_masks(
    frame: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    alpha: float = 0.5,
    contour: bool = True,
    colors: Sequence[tuple[int, int, int]] = PALETTE,
) -> np.ndarray:
    """`frame` (H, W, 3) uint8 with each (H, W) bool mask blended in its colour: (1 - alpha) * pixel + alpha * colour.

    With `contour`, a 1-pixel outline in the full colour is drawn on top, so small masks stay visible.
    """
    _check_frame(frame)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha}, expected a value in [0, 1]")
    out = frame.astype(np.float32)
    h, w = frame.shape[:2]
    for k, mask in enumerate(masks):
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(f"masks[{k}]: got shape {mask.shape}, expected the frame's (H, W) = {(h, w)}")
        color = np.asarray(colors[k % len(colors)], dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
    out = np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))  # OpenCV needs C order
    if contour:
        for k, mask in enumerate(masks):
            m = np.asarray(mask).astype(np.uint8)
            edges, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, edges, -1, tuple(int(c) for c in colors[k % len(colors)]), thickness=1)
    return out


def overlay_video(frames: np.ndarray, masks: np.ndarray, alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Overlay (K, T, H, W) masks on (T, H, W, 3) frames -> (T, H, W, 3) uint8."""
    frames = np.asarray(frames)
    masks = np.asarray(masks).astype(bool)
    if frames.ndim != 4:
        raise ValueError(f"frames: got shape {frames.shape}, expected (T, H, W, 3)")
    if masks.ndim != 4 or masks.shape[1:] != frames.shape[:3]:
        raise ValueError(f"masks: got shape {masks.shape}, expected (K, T, H, W) with (T, H, W) = {frames.shape[:3]}")
    return np.stack([overlay_masks(frames[t], masks[:, t], alpha, contour) for t in range(frames.shape[0])])


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


def save_gif(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as a looping GIF."""
    if len(frames) == 0:
        raise ValueError("frames: got 0 frames, expected at least one")
    for t, f in enumerate(frames):
        _check_frame(f, f"frames[{t}]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def save_mp4(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as an MP4 (mp4v codec of OpenCV)."""
    if len(frames) == 0:
        raise ValueError("frames: got 0 frames, expected at least one")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    finally:
        writer.release()
    return path


def save_overlay(frames: np.ndarray, pred: np.ndarray, target: np.ndarray | None, path_stem: str | Path) -> Path:
    """Prediction (left) and ground truth (right) overlays of one sample: PNG for one frame, GIF for a video.

    frames (T, H, W, 3) uint8; pred / target (K, T, H, W) bool. Returns the written file.
    """
    panels = [overlay_video(frames, pred)]
    if target is not None:
        panels.append(overlay_video(frames, target))
    video = side_by_side(*panels)  # (T, H, W', 3)
    stem = Path(path_stem)
    if video.shape[0] == 1:
        return save_png(video[0], stem.with_suffix(".png"))
    return save_gif(video, stem.with_suffix(".gif"))
