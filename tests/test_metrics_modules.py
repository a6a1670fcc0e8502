"""The torchmetrics modules of pixelqa.metrics against hand-computed values and the functional cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pixelqa.metrics import (
    CIoU,
    GIoU,
    ImageSegIoU,
    JAndF,
    MCQAccuracy,
    RECAccuracy,
    boundary_f,
    jaccard,
    mask_to_box,
    protocols,
)
from pixelqa.metrics.qa import choice_index
from pixelqa.metrics.video import davis_decay, revos_robustness


def _rect(frames: int, height: int, width: int, rows: slice, cols: slice) -> torch.Tensor:
    masks = torch.zeros(frames, height, width, dtype=torch.bool)
    masks[:, rows, cols] = True
    return masks


def _two_objects() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two object sequences with frame-varying overlap (different lengths)."""
    target_a = _rect(4, 20, 30, slice(5, 12), slice(5, 15))
    preds_a = target_a.clone()
    for t in range(4):  # drift right by t pixels
        preds_a[t] = torch.roll(target_a[t], shifts=2 * t, dims=1)
    target_b = _rect(3, 20, 30, slice(2, 8), slice(10, 20))
    preds_b = _rect(3, 20, 30, slice(2, 8), slice(12, 24))
    preds_b[2] = False  # one missed frame
    return [(preds_a, target_a), (preds_b, target_b)]


def test_jandf_is_mean_over_objects_of_frame_means() -> None:
    metric = JAndF()
    per_object_j, per_object_f, j_recall, f_recall = [], [], [], []
    for preds, target in _two_objects():
        metric.update(preds, target)
        j, f = jaccard(preds, target), boundary_f(preds, target)
        per_object_j.append(j.mean().item())
        per_object_f.append(f.mean().item())
        j_recall.append((j > 0.5).float().mean().item())
        f_recall.append((f > 0.5).float().mean().item())
    out = metric.compute()
    expected_j, expected_f = np.mean(per_object_j), np.mean(per_object_f)
    assert out["J"].item() == pytest.approx(expected_j, abs=1e-6)
    assert out["F"].item() == pytest.approx(expected_f, abs=1e-6)
    assert out["J&F"].item() == pytest.approx((expected_j + expected_f) / 2, abs=1e-6)
    assert out["J-recall"].item() == pytest.approx(np.mean(j_recall), abs=1e-6)
    assert out["F-recall"].item() == pytest.approx(np.mean(f_recall), abs=1e-6)
    assert "R" not in out


def test_jandf_hand_values() -> None:
    # Object 1: identical masks on 2 frames -> J = F = 1. Object 2: a 4x4 square vs its left half (2 frames):
    # J = 8 / 16 = 0.5 per frame.
    square = _rect(2, 10, 10, slice(2, 6), slice(2, 6))
    half = _rect(2, 10, 10, slice(2, 6), slice(2, 4))
    metric = JAndF()
    metric.update(square, square)
    metric.update(half, square)
    out = metric.compute()
    assert out["J"].item() == pytest.approx((1.0 + 0.5) / 2)
    assert out["J-recall"].item() == pytest.approx((1.0 + 0.0) / 2)  # 0.5 is not > 0.5
    assert out["J-decay"].item() == pytest.approx(0.0)


def test_davis_decay_bins() -> None:
    # T = 8: bins are frames 0-2, 2-4, 4-6, 6-7 (ids round(linspace(1, 8, 5)) - 1 = 0, 2, 4, 5, 7); decay is
    # mean(frames 0..2) - mean(frames 5..7).
    values = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], dtype=torch.float64)
    assert davis_decay(values).item() == pytest.approx(0.9 - 0.4)
    assert davis_decay(torch.tensor([0.7])).item() == 0.0


def test_revos_robustness_and_accuracy() -> None:
    # Blank expression: no target; the prediction covers 6 pixels, the video's annotated foreground 12 pixels.
    preds = _rect(2, 6, 6, slice(0, 2), slice(0, 3))
    target = torch.zeros_like(preds)
    foreground = _rect(2, 6, 6, slice(3, 6), slice(0, 4))
    r = revos_robustness(preds, target, foreground)  # one clip: 12 false positives over 24 foreground pixels
    torch.testing.assert_close(r, torch.tensor(1 - 12 / (24 + 1e-6)))
    metric = JAndF(robustness=True)
    metric.update(preds, target, foreground=foreground)
    out = metric.compute()
    assert out["R"].item() == pytest.approx(0.5, abs=1e-6)
    assert out["A"].item() == pytest.approx(1 - 6 / 36, abs=1e-6)
    assert out["J"].item() == 0.0  # prediction on a blank expression: empty target, non-empty union
    # A huge false positive clamps R at 0.
    assert revos_robustness(torch.ones(1, 6, 6, dtype=torch.bool), target[:1], foreground[:1]).item() == 0.0


def test_revos_robustness_is_clip_level_as_the_official_script() -> None:
    # Frame 0: 4 false-positive pixels, foreground 8; frame 1: none, foreground 2. The official R sums both areas
    # over the clip: 1 - 4 / 10 = 0.6 (a per-frame R averaged would give (0.5 + 1) / 2 = 0.75).
    target = torch.zeros(2, 4, 4, dtype=torch.bool)
    target[:, 0, 0] = True
    preds = target.clone()
    preds[0, 3, :] = True  # 4 false positives on frame 0
    foreground = torch.zeros(2, 4, 4, dtype=torch.bool)
    foreground[0, :2, :] = True  # 8 pixels
    foreground[1, 0, :2] = True  # 2 pixels
    expected = 1 - 4 / (10 + 1e-6)
    metric = JAndF(robustness=True)
    metric.update(preds, target, foreground=foreground)
    assert metric.compute()["R"].item() == pytest.approx(expected, abs=1e-6)
    assert revos_robustness(preds, target, foreground).item() == pytest.approx(expected, abs=1e-7)
    # the same definition as pixelqa.metrics.protocols.revos_expression (percent, rounded to 0.01)
    assert protocols.revos_expression(preds, target, foreground)["R"] == pytest.approx(round(100 * expected, 2))
    # A second clip, R = 1 - 6 / 12 = 0.5; the metric averages the clip-level values over clips
    blank = _rect(2, 6, 6, slice(0, 1), slice(0, 3))  # 3 false positives per frame, 6 in all
    metric.update(blank, torch.zeros_like(blank), foreground=_rect(2, 6, 6, slice(3, 5), slice(0, 3)))
    out = metric.compute()
    assert out["R"].item() == pytest.approx((expected + 1 - 6 / (12 + 1e-6)) / 2, abs=1e-6)
    # A: pixel agreement over each clip (28 / 32 and 66 / 72), then the mean over clips
    assert out["A"].item() == pytest.approx((28 / 32 + 66 / 72) / 2, abs=1e-6)


def test_jandf_foreground_required_only_with_robustness() -> None:
    preds, target = _two_objects()[0]
    with pytest.raises(ValueError, match="foreground"):
        JAndF(robustness=True).update(preds, target)
    with pytest.raises(ValueError, match="robustness=True"):
        JAndF().update(preds, target, foreground=target)


def test_jandf_rejects_bad_inputs() -> None:
    metric = JAndF()
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="binary"):
        metric.update(torch.full((2, 4, 4), 2, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        metric.update(torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bound_th"):
        JAndF(bound_th=-1)


def test_image_seg_iou_hand_values() -> None:
    # Sample 1: 4-pixel prediction inside an 8-pixel target -> I 4, U 8. Sample 2: both empty -> I 0, U 0 (gIoU 1).
    # Sample 3: disjoint 2-pixel masks -> I 0, U 4.
    preds = torch.zeros(3, 4, 4, dtype=torch.bool)
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    target[0, :2, :] = True
    preds[0, :1, :] = True
    preds[2, 3, :2] = True
    target[2, 0, :2] = True
    metric = ImageSegIoU()
    metric.update(preds[:2], target[:2])
    metric.update(preds[2], target[2])  # (H, W) is one sample
    out = metric.compute()
    assert out["cIoU"].item() == pytest.approx(4 / (8 + 0 + 4 + 1e-10))
    assert out["gIoU"].item() == pytest.approx((4 / (8 + 1e-5) + 1.0 + 0.0) / 3)
    ciou, giou = CIoU(), GIoU()
    ciou.update(preds, target)
    giou.update(preds, target)
    assert ciou.compute().item() == pytest.approx(out["cIoU"].item())
    assert giou.compute().item() == pytest.approx(out["gIoU"].item())


def test_mask_to_box_inclusive_pixels() -> None:
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True  # rows 1..3, cols 2..6
    masks[1, 5, 0] = True  # a single pixel
    boxes = mask_to_box(masks)
    torch.testing.assert_close(boxes, torch.tensor([[2.0, 1, 6, 3], [0, 5, 0, 5], [-1, -1, -1, -1]]))
    assert mask_to_box(masks[0]).tolist() == [2.0, 1.0, 6.0, 3.0]


def test_rec_accuracy_hand_values() -> None:
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # box (0, 0, 3, 3): 16 px; GT (0, 0, 3, 5): 24 px -> IoU 16 / 24 = 0.67, correct
    masks[1, 0:4, 0:4] = True  # GT (0, 0, 3, 7): 32 px -> IoU 0.5 exactly, correct (>= 0.5)
    # masks[2] empty -> no box -> wrong
    gt = torch.tensor([[0, 0, 3, 5], [0, 0, 3, 7], [0, 0, 3, 3]])
    metric = RECAccuracy()
    metric.update(masks, gt)
    assert metric.compute().item() == pytest.approx(2 / 3)
    # Boxes directly: (0, 0, 3, 3) vs (0, 0, 3, 8): 16 / 36 < 0.5 -> wrong.
    metric.update(torch.tensor([[0.0, 0, 3, 3]]), torch.tensor([[0, 0, 3, 8]]))
    assert metric.compute().item() == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="target"):
        metric.update(masks, gt[:2])


def test_mcq_accuracy_overall_and_per_type() -> None:
    metric = MCQAccuracy()
    metric.update(["A", "(B)", None, "c"], [0, 1, 2, 3], ["BQ", "BQ", "SQ", "FP"])
    metric.update(torch.tensor([1, 2]), torch.tensor([1, 0]), ["RQ", "CQ"])
    out = metric.compute()
    # Correct: A/0 (BQ), B/1 (BQ), RQ 1/1; wrong: None (SQ), c = 2 vs 3 (FP), CQ 2 vs 0.
    assert out["acc"].item() == pytest.approx(3 / 6)
    assert out["BQ"].item() == 1.0 and out["SQ"].item() == 0.0 and out["RQ"].item() == 1.0
    assert out["CQ"].item() == 0.0 and out["FP"].item() == 0.0
    with pytest.raises(ValueError, match="unknown question type"):
        metric.update(["A"], ["A"], ["XX"])
    with pytest.raises(ValueError, match="same length"):
        metric.update(["A", "B"], ["A"], ["BQ"])


def test_choice_index() -> None:
    assert [choice_index(c) for c in ["A", "b", "(C)", " D. ", 2, None, "", "3"]] == [0, 1, 2, 3, 2, -1, -1, 3]
    with pytest.raises(ValueError, match="single letter"):
        choice_index("AB")


def test_metrics_reset_and_empty_compute() -> None:
    metric = JAndF()
    preds, target = _two_objects()[0]
    metric.update(preds, target)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute()["J"])


def test_jandf_on_davis_equals_reference_statistics() -> None:
    pytest.importorskip("skimage", reason="scikit-image (dev extra) is needed for the DAVIS reference port")
    from pixelqa.benchmarks.davis_reference import (
        reference_boundary_f,
        reference_jaccard,
        reference_statistics,
    )
    from pixelqa.benchmarks.metrics import davis_clips

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2017-results"
    if not root.is_dir():
        pytest.skip(f"DAVIS 2017 result masks not found at {root} (shared/ beside the repo)")
    clips = davis_clips(root, ["blackswan", "judo"])
    assert len(clips) == 3
    metric = JAndF()
    stats = {"J": [], "F": []}
    for _, preds, target in clips:
        metric.update(torch.from_numpy(preds), torch.from_numpy(target))
        stats["J"].append(reference_statistics(reference_jaccard(target, preds)))
        stats["F"].append(reference_statistics(reference_boundary_f(target, preds)))
    out = metric.compute()
    for measure in ("J", "F"):
        mean, recall, decay = np.mean(stats[measure], axis=0)  # over objects, as the DAVIS toolkit reports
        assert out[measure].item() == pytest.approx(mean, abs=1e-6)
        assert out[f"{measure}-recall"].item() == pytest.approx(recall, abs=1e-6)
        assert out[f"{measure}-decay"].item() == pytest.approx(decay, abs=1e-6)
    assert out["J&F"].item() == pytest.approx((out["J"].item() + out["F"].item()) / 2, abs=1e-7)
