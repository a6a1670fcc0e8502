"""Frame rules of the official evaluation: which frame indices the LLM (and SAM) see, one function per rule.

    uniform_indices(n, k)                      LLM frames of video segmentation: uniform, both ends included
    linspace_indices(n, k)                     GroundMoRe's 20 frames (`np.linspace(0, n - 1, k)` cast to int)
    uniform_with_forced(candidates, k, forced) VideoRefer-Bench-Q / -D and PixelQA: among the annotated frames,
                                               the prompt frame forced in
    fps_indices(n, fps_src, fps, max_frames)   MVBench: Qwen2.5-VL's video reader at `fps`, whole video

Every function returns a list of ints in [0, n) (or members of `candidates`), ascending. They reproduce the
release's numpy arithmetic exactly (numpy's round-half-to-even included), so frame choices match index for index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Qwen2.5-VL's video reader (qwen_vl_utils): frame counts are multiples of 2, at least 4
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4


def _check_count(name: str, value: int, minimum: int) -> None:
    """Raise a ValueError naming the argument when it is not an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: got {value!r}, expected an int >= {minimum}")


def uniform_indices(n: int, k: int) -> list[int]:
    """`round(arange(0, n, (n - 1) / (k - 1)))[:k]`: k evenly spaced frames of n, first and last included.

    As the release's `load_frames(sample_type='uniform')`: a video shorter than k frames repeats frames (the
    step is below 1) rather than returning fewer; a one-frame input (an image) gives [0].
    """
    _check_count("n", n, 1)
    _check_count("k", k, 1)
    if n == 1 or k == 1:  # the release's step would be 0 (n == 1) or a division by zero (k == 1)
        return [0]
    step = (n - 1) / (k - 1)
    return [int(i) for i in np.round(np.arange(0, n, step)[:k])]


def linspace_indices(n: int, k: int) -> list[int]:
    """`np.linspace(0, n - 1, k).astype(int)`: k frames, truncated (not rounded) towards 0; GroundMoRe's rule."""
    _check_count("n", n, 1)
    _check_count("k", k, 1)
    return [int(i) for i in np.linspace(0, n - 1, k).astype(int)]


def uniform_with_forced(candidates: Sequence[int], k: int, forced: int) -> list[int]:
    """k of `candidates` chosen by `uniform_indices`, with `forced` in: it replaces the nearest chosen frame.

    `candidates` are frame indices (VideoRefer's annotated frames), `forced` the prompt frame. With k or fewer
    candidates all of them are kept. When `forced` is not a candidate it is still placed (the prompt frame must
    be seen); ties in distance go to the earlier chosen frame.
    """
    _check_count("k", k, 1)
    cands = sorted({int(c) for c in candidates})
    if not cands:
        raise ValueError("candidates: got an empty list, expected at least one frame index")
    if len(cands) <= k:
        chosen = cands
    else:
        chosen = [cands[i] for i in uniform_indices(len(cands), k)]
    if forced not in chosen:
        nearest = min(range(len(chosen)), key=lambda j: (abs(chosen[j] - forced), j))
        chosen = list(chosen)
        if len(chosen) < k and forced not in cands:
            chosen.append(int(forced))
        else:
            chosen[nearest] = int(forced)
    return sorted(chosen)


def fps_frame_count(n: int, fps_src: float, fps: float, max_frames: int) -> int:
    """Frames Qwen2.5-VL's reader takes from n frames at fps_src when sampling at `fps`, capped at max_frames."""
    _check_count("n", n, 1)
    if not fps_src > 0 or not fps > 0:
        raise ValueError(f"fps_src / fps: got {fps_src!r} / {fps!r}, expected positive frame rates")
    wanted = n / fps_src * fps
    lo = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    hi = math.floor(min(max_frames, n) / FRAME_FACTOR) * FRAME_FACTOR
    count = min(min(max(wanted, lo), hi), n)
    count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    return max(int(count), 1)


def fps_indices(n: int, fps_src: float, fps: float = 2.0, max_frames: int = 16) -> list[int]:
    """MVBench's frames: the whole video at `fps`, at most `max_frames`, `round(linspace(0, n - 1, count))`."""
    _check_count("max_frames", max_frames, 1)
    count = fps_frame_count(n, fps_src, fps, max_frames)
    return [int(i) for i in np.round(np.linspace(0, n - 1, count))]


def groundmore_indices(n: int, sam_frames: int = 20, llm_frames: int = 16) -> tuple[list[int], list[int]]:
    """GroundMoRe: (SAM frames = linspace of n, LLM frames = the uniform `llm_frames` of those), frame indices."""
    sam = linspace_indices(n, sam_frames)
    return sam, [sam[i] for i in uniform_indices(len(sam), llm_frames)]
