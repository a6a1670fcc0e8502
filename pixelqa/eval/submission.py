"""Submissions of the server-scored splits (MeViS valid, Ref-YouTube-VOS valid): one palette PNG per frame of
every expression, in the layout the evaluation servers read, zipped.

    Ref-YouTube-VOS (CodaLab):  Annotations/<video>/<exp_id>/<frame>.png
    MeViS (CodaLab):            <video>/<exp_id>/<frame>.png

A PNG is 8-bit palette mode: index 0 background, 1 the object (the DAVIS palette's red), so the servers (which
read `np.array(Image.open(p)) > 0`) see the mask. Files are written atomically (temp name + rename) and an
expression already written is left alone, so a killed run resumes.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUTS: dict[str, str] = {"ref_youtube_vos": "Annotations", "mevis": ""}
# DAVIS palette: black, red, then zeros (servers only test > 0)
PALETTE: list[int] = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254


class SubmissionWriter:
    """Writes one benchmark's prediction PNGs under `root` and zips them (`finish`)."""

    def __init__(self, benchmark: str, root: str | Path) -> None:
        if benchmark not in LAYOUTS:
            raise ValueError(f"benchmark: got {benchmark!r}, expected one of {sorted(LAYOUTS)} (server-scored)")
        self.benchmark = benchmark
        self.root = Path(root)
        self.base = self.root / LAYOUTS[benchmark] if LAYOUTS[benchmark] else self.root

    def write(self, video: str, exp_id: str, frame_names: list[str], masks: np.ndarray) -> int:
        """Write (T, H, W) bool masks as <video>/<exp_id>/<frame>.png; returns the number of files."""
        if masks.ndim != 3 or masks.shape[0] != len(frame_names):
            raise ValueError(f"masks: got shape {masks.shape}, expected ({len(frame_names)}, H, W), one per frame")
        folder = self.base / video / exp_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, m in zip(frame_names, masks):
            target = folder / f"{Path(name).stem}.png"
            image = Image.fromarray(m.astype(np.uint8), mode="P")
            image.putpalette(PALETTE)
            tmp = target.with_name(f".{target.name}.tmp")
            image.save(tmp, format="PNG")
            os.replace(tmp, target)
        return len(frame_names)

    def finish(self, zip_path: str | Path) -> Path:
        """Zip every PNG (paths relative to `root`, sorted) into zip_path, atomically; returns the path."""
        zip_path = Path(zip_path)
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = zip_path.with_name(f".{zip_path.name}.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(self.root.rglob("*.png")):
                zf.write(f, f.relative_to(self.root).as_posix())
        os.replace(tmp, zip_path)
        return zip_path


def read_submission_mask(path: str | Path) -> np.ndarray:
    """A submission PNG as the server reads it: (H, W) bool of pixel value > 0."""
    return np.array(Image.open(path)) > 0
