"""Progress bars of predict: on unless `--no-progress` (progress=False) or the environment's TQDM_DISABLE says off.

tqdm reads TQDM_DISABLE only as the default of `disable`, and predict passes `disable` explicitly, so the variable
is honoured here: any value but empty, 0, false, no or off turns bars off.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

OFF_WORDS = ("", "0", "false", "no", "off")


def progress_enabled(progress: bool) -> bool:
    """Whether bars are drawn: `progress` asked for them and TQDM_DISABLE does not turn them off."""
    return progress and os.environ.get("TQDM_DISABLE", "").strip().lower() in OFF_WORDS


def progress_bar(progress: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar (kwargs: total, desc, unit, leave...) drawn only when `progress_enabled(progress)`."""
    return tqdm(disable=not progress_enabled(progress), **kwargs)
