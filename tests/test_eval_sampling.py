"""Frame rules of the official evaluation (pixelqa.frame_sampling) against hand-computed indices."""

from __future__ import annotations

import pytest

from pixelqa.frame_sampling import (
    fps_indices,
    groundmore_indices,
    linspace_indices,
    uniform_indices,
    uniform_with_forced,
)


def test_uniform_includes_both_ends_and_rounds_half_to_even():
    # n=100: step 99/15 = 6.6 -> 0, 6.6, 13.2, 19.8, 26.4, 33, 39.6, ... 99
    assert uniform_indices(100, 16) == [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]
    # n=31: step 2 -> every other frame, exact
    assert uniform_indices(31, 16) == list(range(0, 31, 2))
    # n=4, k=3: step 1.5 -> 0, 1.5, 3.0; numpy rounds 1.5 to 2 (half to even)
    assert uniform_indices(4, 3) == [0, 2, 3]
    # n=6, k=3: step 2.5 -> 0, 2.5, 5; 2.5 rounds to 2 (half to even), not 3
    assert uniform_indices(6, 3) == [0, 2, 5]


def test_uniform_short_video_repeats_frames_and_image_is_one_frame():
    # n=4 < k=6: step 0.6 -> 0, .6, 1.2, 1.8, 2.4, 3.0 -> rounded 0 1 1 2 2 3 (as the release: [:k])
    assert uniform_indices(4, 6) == [0, 1, 1, 2, 2, 3]
    assert uniform_indices(1, 16) == [0]
    assert uniform_indices(9, 1) == [0]


def test_linspace_truncates():
    # linspace(0, 9, 4) = 0, 3, 6, 9; linspace(0, 10, 4) = 0, 3.33, 6.67, 10 -> int: 0 3 6 10
    assert linspace_indices(10, 4) == [0, 3, 6, 9]
    assert linspace_indices(11, 4) == [0, 3, 6, 10]


def test_groundmore_llm_frames_are_16_of_the_20():
    sam, llm = groundmore_indices(39)  # linspace(0, 38, 20) = 0, 2, 4, ... 38 exactly
    assert sam == list(range(0, 39, 2))
    # uniform(20, 16): step 19/15 -> positions 0,1,3,4,5,6,8,9,10,11,13,14,15,16,18,19 (1.27->1, 2.53->3 ...)
    assert llm == [0, 2, 6, 8, 10, 12, 16, 18, 20, 22, 26, 28, 30, 32, 36, 38]
    assert set(llm) <= set(sam)


def test_uniform_with_forced_replaces_nearest():
    cands = list(range(0, 40, 2))  # 20 annotated frames
    base = uniform_with_forced(cands, 16, forced=0)
    assert base == [0, 2, 6, 8, 10, 12, 16, 18, 20, 22, 26, 28, 30, 32, 36, 38]
    # 4 is annotated but not chosen: it replaces the nearest chosen one (2 and 6 are both 2 away: the earlier, 2)
    assert uniform_with_forced(cands, 16, forced=4) == [0, 4, 6, 8, 10, 12, 16, 18, 20, 22, 26, 28, 30, 32, 36, 38]
    assert uniform_with_forced([5, 9, 1], 16, forced=9) == [1, 5, 9]
    assert uniform_with_forced([5, 9], 16, forced=7) == [5, 7, 9]
    with pytest.raises(ValueError, match="candidates"):
        uniform_with_forced([], 16, forced=0)


def test_fps_indices_follow_qwen_reader():
    # 300 frames at 30 fps = 10 s -> 20 frames at 2 fps, capped at 16; linspace(0, 299, 16) step 19.93
    assert fps_indices(300, 30.0) == [0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259, 279, 299]
    # 90 frames at 30 fps = 3 s -> 6 frames (even); linspace(0, 89, 6) = 0, 17.8, 35.6, 53.4, 71.2, 89
    assert fps_indices(90, 30.0) == [0, 18, 36, 53, 71, 89]
    # 1 s -> 2 wanted, raised to the minimum of 4
    assert fps_indices(30, 30.0) == [0, 10, 19, 29]


def test_bad_counts_name_the_argument():
    with pytest.raises(ValueError, match="n: got 0"):
        uniform_indices(0, 16)
    with pytest.raises(ValueError, match="k: got -1"):
        linspace_indices(5, -1)
    with pytest.raises(ValueError, match="fps"):
        fps_indices(10, 0.0)
