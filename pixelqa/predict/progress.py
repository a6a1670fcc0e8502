"""Progress bars of predict: on unless `--no-progress` (progress=False) or the environment's TQDM_DISABLE says off.

tqdm reads TQDM_DISABLE only as the default of `disable`, and predict passes `disable` explicitly, so the variable
is honoured here: any value but empty, 0, false, no or off turns bars off.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from pixelqa.quiet import OFF_WORDS, progress_enabled

__all__ = ["OFF_WORDS", "progress_bar", "progress_enabled"]


def progress_bar(progress: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar (kwargs: total, desc, unit, leave...) drawn only when `progress_enabled(progress)`."""
    return tqdm(disable=not progress_enabled(progress), **kwargs)
