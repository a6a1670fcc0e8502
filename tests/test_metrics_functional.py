"""pixelqa.metrics.functional against the DAVIS 2017 evaluation (our numpy/OpenCV port) and hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pixelqa.metrics.functional import (
    as_mask_clip,
    boundary_f,
    boundary_radius,
    count_true,
    dilate_disk,
    disk_footprint,
    jaccard,
    jaccard_and_boundary_f,
    seg_to_boundary,
)

cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage", reason="scikit-image (dev extra) is needed for the DAVIS reference port")

from pixelqa.benchmarks.davis_reference import (  # noqa: E402 (after the importorskip guards)
    reference_boundary_f,
    reference_disk,
    reference_jaccard,
    reference_seg2bmap,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2017-results"
SEQUENCES = ("blackswan", "bmx-trees", "camel", "dog", "judo", "soapbox")
TOL = 1e-6


def _load_sequence(method: str, sequence: str) -> np.ndarray:
    """(T, H, W) uint8 object ids from palette PNGs (PIL keeps the palette indices)."""
    from PIL import Image

    frames = sorted((DATA / method / sequence).glob("*.png"))
    return np.stack([np.array(Image.open(path)) for path in frames])


def _davis_pairs(sequence: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(osvos object, rvos object overlapping it most on frame 0) bool clips for every OSVOS object."""
    osvos, rvos = _load_sequence("osvos", sequence), _load_sequence("rvos", sequence)
    pairs = []
    for obj in (i for i in np.unique(osvos) if i != 0):
        target = osvos == obj
        candidates = [i for i in np.unique(rvos) if i != 0]
        best = max(candidates, key=lambda i: int((target[0] & (rvos[0] == i)).sum()))
        pairs.append((rvos == best, target))
    return pairs


@pytest.mark.skipif(not DATA.is_dir(), reason=f"DAVIS 2017 result masks not found at {DATA} (shared/ beside the repo)")
@pytest.mark.parametrize("sequence", [SEQUENCES[0], *(pytest.param(s, marks=pytest.mark.slow) for s in SEQUENCES[1:])])
def test_davis_sequences_match_reference_every_frame(sequence: str) -> None:
    pairs = _davis_pairs(sequence)
    assert pairs
    for preds, target in pairs:
        assert preds.shape[1:] == (480, 854)
        ref_j = reference_jaccard(target, preds)
        ref_f = reference_boundary_f(target, preds)
        ours_j = jaccard(torch.from_numpy(preds), torch.from_numpy(target)).numpy()
        ours_f = boundary_f(torch.from_numpy(preds), torch.from_numpy(target)).numpy()
        np.testing.assert_allclose(ours_j, ref_j, rtol=0, atol=TOL)
        np.testing.assert_allclose(ours_f, ref_f, rtol=0, atol=TOL)
        both_j, both_f = jaccard_and_boundary_f(preds, target)  # numpy input, shared crop
        np.testing.assert_allclose(both_j.numpy(), ref_j, rtol=0, atol=TOL)
        np.testing.assert_allclose(both_f.numpy(), ref_f, rtol=0, atol=TOL)
        # Swapped roles (P and R exchange) on a few frames.
        np.testing.assert_allclose(
            boundary_f(target[:5], preds[:5]).numpy(), reference_boundary_f(preds[:5], target[:5]), atol=TOL
        )
        assert ref_f.std() > 0 and 0 < ref_j.mean() < 1  # real, varied frames, not a degenerate clip


# --- hand-computed cases -------------------------------------------------------------------------------------------

# A 5x5 square at rows 1..5, cols 1..5 of an 8x10 image, and the same square shifted right by 3 columns.
SQUARE = np.zeros((8, 10), dtype=bool)
SQUARE[1:6, 1:6] = True
SHIFTED = np.zeros((8, 10), dtype=bool)
SHIFTED[1:6, 4:9] = True

# Boundary maps written by hand: a pixel differing from its east, south or south-east neighbour, so the outline
# sits half a pixel towards the origin (rows 0..5, cols 0..5 for SQUARE).
SQUARE_BOUNDARY = """
111111....
1....1....
1....1....
1....1....
1....1....
111111....
..........
..........
"""
SHIFTED_BOUNDARY = """
...111111.
...1....1.
...1....1.
...1....1.
...1....1.
...111111.
..........
..........
"""


def _grid(text: str) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in text.strip().splitlines()])


def test_hand_boundary_maps() -> None:
    maps = seg_to_boundary(torch.from_numpy(np.stack([SQUARE, SHIFTED])))
    np.testing.assert_array_equal(maps[0].numpy(), _grid(SQUARE_BOUNDARY))
    np.testing.assert_array_equal(maps[1].numpy(), _grid(SHIFTED_BOUNDARY))


def test_hand_square_vs_shifted_square() -> None:
    p, t = torch.from_numpy(SHIFTED), torch.from_numpy(SQUARE)
    # J: intersection 5 rows x 2 cols = 10, union 5 x 8 = 40.
    assert jaccard(p, t).item() == pytest.approx(0.25, abs=1e-7)
    # Radius 0 (bound_th = 0): only coinciding boundary pixels match: cols 3..5 of rows 0 and 5 -> 6 of 20 each way.
    assert boundary_f(p, t, bound_th=0).item() == pytest.approx(6 / 20, abs=1e-7)
    # Radius 1 (a plus-shaped disk): top and bottom rows match at cols 3..5 (and col 2/6 next to them): 4 + 4,
    # plus the right column's rows 1 and 4 (next to the other outline's top/bottom row): 10 of 20 each way.
    assert boundary_f(p, t, bound_th=1).item() == pytest.approx(0.5, abs=1e-7)
    # Radius 3 reaches across the 3-column shift everywhere.
    assert boundary_f(p, t, bound_th=3).item() == pytest.approx(1.0, abs=1e-7)
    for th in (0, 1, 2, 3, 0.1):
        assert boundary_f(p, t, bound_th=th).item() == pytest.approx(reference_boundary_f(SQUARE, SHIFTED, th), abs=TOL)


def test_empty_mask_conventions() -> None:
    empty = torch.zeros(2, 6, 7, dtype=torch.bool)
    full = torch.zeros(2, 6, 7, dtype=torch.bool)
    full[:, 1:4, 2:5] = True
    # Both empty: J = 1 and P = R = 1 -> F = 1.
    assert jaccard(empty, empty).tolist() == [1.0, 1.0]
    assert boundary_f(empty, empty).tolist() == [1.0, 1.0]
    # Empty prediction: J = 0; P = 1, R = 0 -> F = 0. Empty target: J = 0; P = 0, R = 1 -> F = 0.
    assert jaccard(empty, full).tolist() == [0.0, 0.0]
    assert boundary_f(empty, full).tolist() == [0.0, 0.0]
    assert boundary_f(full, empty).tolist() == [0.0, 0.0]
    # Mixed frames in one clip: frame 0 both empty, frame 1 identical masks.
    mixed = full.clone()
    mixed[0] = False
    assert jaccard(mixed, mixed).tolist() == [1.0, 1.0]
    assert boundary_f(mixed, mixed).tolist() == [1.0, 1.0]


def test_single_frame_returns_scalar() -> None:
    j = jaccard(SQUARE, SHIFTED)
    f = boundary_f(SQUARE, SHIFTED)
    assert j.shape == () and f.shape == () and j.dtype == torch.float32


# --- randomised agreement with the reference ----------------------------------------------------------------------


def _blobs(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """Random blobby masks (smoothed noise thresholded), some frames empty or full."""
    noise = rng.random((frames, height, width))
    kernel = np.ones((3, 3)) / 9
    smooth = np.stack([cv2.filter2D(n, -1, kernel) for n in noise])
    masks = smooth > rng.uniform(0.45, 0.6)
    if frames > 2:
        masks[1] = False
        masks[2] = True
    return masks


@pytest.mark.parametrize("shape", [(3, 1, 9), (3, 9, 1), (3, 2, 2), (4, 17, 23), (5, 40, 31), (3, 64, 96)])
@pytest.mark.parametrize("bound_th", [0.008, 0.05, 0.3, 1, 2.5, 3, 4.5, 40])
def test_random_masks_match_reference(shape: tuple[int, int, int], bound_th: float) -> None:
    rng = np.random.default_rng(sum(shape) * 31 + int(bound_th * 10))
    preds, target = _blobs(rng, *shape), _blobs(rng, *shape)
    np.testing.assert_allclose(jaccard(preds, target).numpy(), reference_jaccard(target, preds), atol=TOL)
    np.testing.assert_allclose(
        boundary_f(preds, target, bound_th).numpy(), reference_boundary_f(target, preds, bound_th), atol=TOL
    )


def test_small_objects_away_from_borders_match_reference() -> None:
    # Objects well inside the frame exercise the crop to the foreground box (borders of the crop are not borders
    # of the image).
    rng = np.random.default_rng(0)
    preds = np.zeros((4, 60, 80), dtype=bool)
    target = np.zeros((4, 60, 80), dtype=bool)
    preds[:, 20:30, 30:45] = _blobs(rng, 4, 10, 15)
    target[:, 22:33, 28:41] = _blobs(rng, 4, 11, 13)
    for th in (0.008, 0.1, 2):
        np.testing.assert_allclose(
            boundary_f(preds, target, th).numpy(), reference_boundary_f(target, preds, th), atol=TOL
        )
    np.testing.assert_allclose(jaccard(preds, target).numpy(), reference_jaccard(target, preds), atol=TOL)


def test_seg_to_boundary_matches_reference() -> None:
    rng = np.random.default_rng(1)
    for shape in [(2, 1, 1), (2, 1, 7), (2, 7, 1), (3, 13, 17)]:
        masks = _blobs(rng, *shape) if min(shape[1:]) > 1 else rng.random(shape) > 0.5
        ours = seg_to_boundary(torch.from_numpy(masks)).numpy()
        for t in range(shape[0]):
            np.testing.assert_array_equal(ours[t], reference_seg2bmap(masks[t]))


@pytest.mark.parametrize("radius", [0, 1, 1.5, 2, 2.5, 3, 5, 7.3, 8, 12])
def test_disk_and_dilation_match_skimage_and_opencv(radius: float) -> None:
    np.testing.assert_array_equal(disk_footprint(radius), reference_disk(radius).astype(bool))
    rng = np.random.default_rng(int(radius * 10))
    sparse = rng.random((3, 37, 41)) > 0.97
    ours = dilate_disk(torch.from_numpy(sparse), radius).numpy()
    for t in range(3):
        expected = cv2.dilate(sparse[t].astype(np.uint8), reference_disk(radius)).astype(bool)
        np.testing.assert_array_equal(ours[t], expected)


def test_boundary_radius() -> None:
    assert boundary_radius(480, 854, 0.008) == 8.0  # ceil(0.008 * 979.6)
    assert boundary_radius(480, 854, 3) == 3.0
    assert boundary_radius(10, 10, 0) == 0.0
    with pytest.raises(ValueError, match="bound_th"):
        boundary_radius(10, 10, -1)


def test_count_true_matches_sum() -> None:
    rng = np.random.default_rng(2)
    for shape in [(1, 1, 1), (3, 7, 5), (2, 100, 77)]:
        masks = torch.from_numpy(rng.random(shape) > 0.3)
        assert count_true(masks).tolist() == masks.sum(dim=(1, 2)).tolist()


# --- bad inputs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preds", "target", "error", "match"),
    [
        (torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool), ValueError, "same shape"),
        (torch.full((4, 4), 2, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.uint8), ValueError, "binary.*2"),
        (torch.full((4, 4), 0.5), torch.zeros(4, 4), ValueError, "binary.*0.5"),
        (torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0, 4, 4, dtype=torch.bool), ValueError, "empty"),
        (torch.zeros(2, 0, 4, dtype=torch.bool), torch.zeros(2, 0, 4, dtype=torch.bool), ValueError, "empty"),
        (torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool), ValueError, "shape"),
        (torch.zeros(1, 2, 4, 4, dtype=torch.bool), torch.zeros(1, 2, 4, 4, dtype=torch.bool), ValueError, "shape"),
        ([[0, 1]], [[0, 1]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(preds, target, error, match) -> None:
    with pytest.raises(error, match=match):
        jaccard(preds, target)
    with pytest.raises(error, match=match):
        boundary_f(preds, target)


def test_binary_non_bool_inputs_are_accepted() -> None:
    u8 = SQUARE.astype(np.uint8)
    f32 = torch.from_numpy(SHIFTED.astype(np.float32))
    assert jaccard(u8, f32).item() == pytest.approx(0.25)
    clip, squeezed = as_mask_clip(u8, "preds")
    assert clip.dtype == torch.bool and clip.shape == (1, 8, 10) and squeezed


def test_negative_bound_th_raises() -> None:
    with pytest.raises(ValueError, match="bound_th"):
        boundary_f(SQUARE, SHIFTED, bound_th=-0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(3)
    preds, target = torch.from_numpy(_blobs(rng, 6, 120, 160)), torch.from_numpy(_blobs(rng, 6, 120, 160))
    j_cpu, f_cpu = jaccard_and_boundary_f(preds, target)
    j_gpu, f_gpu = jaccard_and_boundary_f(preds.cuda(), target.cuda())
    assert j_gpu.is_cuda and f_gpu.is_cuda
    torch.testing.assert_close(j_gpu.cpu(), j_cpu, atol=TOL, rtol=0)
    torch.testing.assert_close(f_gpu.cpu(), f_cpu, atol=TOL, rtol=0)


def test_bit_planes_pack_and_popcount_match_numpy() -> None:
    from pixelqa.metrics.bitplanes import pack_bits, popcount_frames, shift_columns, unpack_bits

    rng = np.random.default_rng(4)
    for shape in [(2, 3, 1), (2, 5, 63), (3, 4, 64), (2, 7, 130)]:
        masks = rng.random(shape) > 0.3  # dense: many bytes >= 128 (the sign bit of the packing product)
        masks[0, 0, :] = True
        planes = pack_bits(torch.from_numpy(masks), min_pad=9)
        expected = np.packbits(masks, axis=-1, bitorder="little")
        np.testing.assert_array_equal(planes.numpy()[..., : expected.shape[-1]], expected)
        assert (planes.numpy()[..., expected.shape[-1] :] == 0).all()  # padding is zero
        assert popcount_frames(planes).tolist() == masks.sum(axis=(1, 2)).tolist()
        for dx in (-9, -1, 1, 8, 9):
            shifted = unpack_bits(shift_columns(planes, dx), shape[2])
            expected_shift = np.zeros_like(masks)
            if dx > 0:
                expected_shift[..., : max(shape[2] - dx, 0)] = masks[..., dx:]
            else:
                expected_shift[..., -dx:] = masks[..., : shape[2] + dx]
            np.testing.assert_array_equal(shifted, expected_shift)


def test_bit_planes_pack_clips_together_and_or_shifted() -> None:
    from pixelqa.metrics.bitplanes import _or_shifted, pack_bits, shift_columns

    rng = np.random.default_rng(5)
    a, b = (torch.from_numpy(rng.random((3, 5, 70)) > 0.4) for _ in range(2))
    together = pack_bits((a, b), min_pad=9)
    assert torch.equal(together, torch.cat([pack_bits(a, min_pad=9), pack_bits(b, min_pad=9)]))
    planes = pack_bits(a, min_pad=9)
    for dx in (-17, -8, -3, 0, 1, 8, 13):
        out, tmp = torch.empty_like(planes), torch.empty_like(planes)
        _or_shifted(out, planes, dx, tmp)
        assert torch.equal(out, planes | shift_columns(planes, dx)), dx


def test_dilation_rejects_runs_that_are_not_nested() -> None:
    from pixelqa.metrics.bitplanes import DiskDilationPlanes

    with pytest.raises(ValueError, match="not nested"):
        DiskDilationPlanes(((0, -2, 0), (1, 0, 2)))
    with pytest.raises(ValueError, match="does not contain 0"):
        DiskDilationPlanes(((0, 1, 2),))


@pytest.mark.parametrize("bound_th", [0.008, 0.2, 2.5])
def test_frame_chunks_with_their_own_crops_match_reference(monkeypatch, bound_th: float) -> None:
    # Two frames per chunk: an object that moves across the frame gives every chunk a different foreground box,
    # frames 2-3 (a whole chunk) are empty in both clips, and frame 6 has a prediction but no target.
    import pixelqa.metrics.functional as functional

    frames, height, width = 7, 40, 70
    monkeypatch.setattr(functional, "_CHUNK_PIXELS", 2 * height * width)
    rng = np.random.default_rng(11)
    preds = np.zeros((frames, height, width), dtype=bool)
    target = np.zeros_like(preds)
    for t, x in zip((0, 1, 4, 5), (2, 10, 40, 50)):
        target[t, 5:20, x : x + 15] = _blobs(rng, 1, 15, 15)[0]
        preds[t, 7:22, x + 1 : x + 16] = _blobs(rng, 1, 15, 15)[0]
    preds[6, 30:38, 60:68] = True
    j, f = jaccard_and_boundary_f(preds, target, bound_th)
    np.testing.assert_allclose(j.numpy(), reference_jaccard(target, preds), atol=TOL)
    np.testing.assert_allclose(f.numpy(), reference_boundary_f(target, preds, bound_th), atol=TOL)
    assert f[2] == 1 and f[6] == 0  # empty in both, prediction only
    assert 0 < f[0] < 1 or bound_th != 0.008  # a partial match at the DAVIS tolerance


def test_results_do_not_depend_on_torch_threads_and_the_count_is_restored() -> None:
    rng = np.random.default_rng(12)
    preds, target = torch.from_numpy(_blobs(rng, 5, 90, 130)), torch.from_numpy(_blobs(rng, 5, 90, 130))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = jaccard_and_boundary_f(preds, target)
        torch.set_num_threads(2)
        two = jaccard_and_boundary_f(preds, target)
        assert torch.get_num_threads() == 2  # the metric ran on one thread and gave the count back
        j_two = jaccard(preds, target)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1]) and torch.equal(j_two, one[0])
    np.testing.assert_allclose(two[1].numpy(), reference_boundary_f(target.numpy(), preds.numpy()), atol=TOL)
