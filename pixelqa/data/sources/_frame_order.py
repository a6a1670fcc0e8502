"""Frame files in time order: by the number in their names, not as text.

Releases do not zero-pad frame names consistently (``frame_2`` / ``frame_10``, ``1.png`` / ``10.png``), so a text
sort plays such a video out of order and pairs masks keyed by frame index with the wrong images. One helper for
every converter that lists a frame folder or a list of frame file names, and for predict's frames folders. Hidden
files (names starting with '.': macOS's `._*` AppleDouble twins and `.DS_Store`, editors' thumbnails and backups)
are never frames. This module registers no source (its name starts with '_').
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

_NUM = re.compile(r"(\d+)")
PathLike = TypeVar("PathLike", str, Path)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")  # the converters' frame files (the schema stores JPEG / PNG)


def frame_number(path: str | Path) -> int:
    """The last number in a frame file's name (-1 when it has none)."""
    found = _NUM.findall(Path(path).stem)
    return int(found[-1]) if found else -1


def frame_order(paths: Iterable[PathLike]) -> list[PathLike]:
    """`paths` sorted by frame number; ties (and names without a number) by name, so the order never depends on
    the order a folder listing happens to return."""
    return sorted(paths, key=lambda p: (frame_number(p), Path(p).name))


def is_hidden(path: str | Path) -> bool:
    """Whether a file is hidden (its name starts with '.'): `._00000.jpg`, `.DS_Store`, `.thumb.png` are no frames."""
    return Path(path).name.startswith(".")


def frame_files(folder: str | Path, suffixes: Iterable[str] = FRAME_SUFFIXES) -> list[Path]:
    """The frame files of a folder in time order (`frame_order`): names ending in one of `suffixes` (any case),
    hidden files skipped."""
    wanted = tuple(s.lower() for s in suffixes)
    return frame_order(p for p in Path(folder).iterdir() if not is_hidden(p) and p.suffix.lower() in wanted)
