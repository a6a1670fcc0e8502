"""Which frames predict reads (SAM: every frame, or `--max-frames` of them) and which the LLM sees (16 uniform).

The rules themselves are `pixelqa.frame_sampling` (the official evaluation's); this module only applies them
to several prompt frames at once, all of which must be kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from pixelqa.frame_sampling import uniform_with_forced

LLM_FRAMES = 16  # the released model's inference: 16 uniform frames, both ends included


def keep_forced(n: int, k: int, forced: Sequence[int]) -> list[int]:
    """k frames of range(n), uniform with both ends (all of them when n <= k), every frame of `forced` included.

    The first forced frame is placed by `uniform_with_forced`; each further one replaces the nearest chosen frame
    that is not itself forced (ties: the earlier one). More forced frames than k are all kept.
    """
    forced = sorted({int(f) for f in forced})
    for f in forced:
        if not 0 <= f < n:
            raise ValueError(f"forced frame: got {f}, expected 0 <= frame < {n}")
    chosen = uniform_with_forced(range(n), k, forced[0] if forced else 0)
    for f in forced[1:]:
        if f in chosen:
            continue
        free = [j for j, c in enumerate(chosen) if c not in forced]
        if not free:
            chosen.append(f)
        else:
            j = min(free, key=lambda j: (abs(chosen[j] - f), j))
            chosen[j] = f
        chosen = sorted(chosen)
    return chosen


def sam_frame_ids(n: int, max_frames: int | None, forced: Sequence[int] = ()) -> list[int]:
    """Original indices of the frames read (SAM sees all of them): every frame, or `max_frames` with the prompts'."""
    if max_frames is None or n <= max_frames:
        return list(range(n))
    return keep_forced(n, max_frames, forced)


def llm_positions(n_sam: int, forced: Sequence[int] = (), k: int = LLM_FRAMES) -> list[int]:
    """Positions among the n_sam read frames that the LLM sees: k uniform incl. both ends, prompt frames forced in."""
    return keep_forced(n_sam, k, forced)
