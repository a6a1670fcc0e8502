"""Evaluation metrics: DAVIS J / F / J&F (+ ReVOS R), image cIoU / gIoU, REC accuracy, MCQ accuracy, answer exact
match per task (teacher-forced).

Functional cores live in ``pixelqa.metrics.functional``; the torchmetrics ``Metric`` classes keep summable
states only, so they reduce correctly across DDP processes.
"""

from pixelqa.metrics.answers import TaskAccuracy, answer_exact_match
from pixelqa.metrics.functional import boundary_f, jaccard, jaccard_and_boundary_f
from pixelqa.metrics.image import (
    CIoU,
    GIoU,
    ImageSegIoU,
    RECAccuracy,
    box_iou_inclusive,
    mask_to_box,
)
from pixelqa.metrics.qa import MCQAccuracy
from pixelqa.metrics.video import JAndF

__all__ = [
    "CIoU",
    "GIoU",
    "ImageSegIoU",
    "JAndF",
    "MCQAccuracy",
    "RECAccuracy",
    "TaskAccuracy",
    "answer_exact_match",
    "boundary_f",
    "box_iou_inclusive",
    "jaccard",
    "jaccard_and_boundary_f",
    "mask_to_box",
]
