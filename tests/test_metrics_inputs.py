"""Metric inputs a library user hands over: TaskAccuracy's outcomes and task names, numpy choice indices, the REC
threshold, compute before any update, and what importing pixelqa.metrics imports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pixelqa.metrics import CIoU, GIoU, ImageSegIoU, MCQAccuracy, RECAccuracy, TaskAccuracy

# ---- TaskAccuracy -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "correct, match",
    [
        (torch.tensor([2, 3]), r"correct: got torch\.int64 value 2, expected bool outcomes \(or 0 / 1\)"),
        (torch.tensor([1.0, -1.0]), r"correct: got torch\.float32 value -1\.0, expected bool outcomes"),
        (torch.tensor([0.5, 1.0]), r"correct: got torch\.float32 value 0\.5"),
        (torch.tensor([float("nan"), 1.0]), r"correct: got torch\.float32 value nan"),
        (torch.tensor([[True], [False]]), r"correct: got shape \(2, 1\), expected \(B,\) bool outcomes"),
        (torch.tensor(True), r"correct: got shape \(\), expected \(B,\)"),
        (["yes", "no"], r"correct: got list, expected \(B,\) bool outcomes"),
    ],
)
def test_task_accuracy_refuses_outcomes_that_are_not_bool(correct, match):
    acc = TaskAccuracy()
    with pytest.raises(ValueError, match=match):
        acc.update(correct, ["mcq", "mcq"])
    assert int(acc.total.sum()) == 0  # nothing was counted


def test_task_accuracy_takes_lists_zero_one_values_and_one_task_name():
    acc = TaskAccuracy()
    acc.update([True, False], ["mcq", "video_qa"])
    acc.update(torch.tensor([1, 1]), ["mcq", "mcq"])
    acc.update(np.array([0.0]), "video_qa")  # a single sample's task as a str
    out = acc.compute()
    assert out["mcq"] == 1.0 and out["video_qa"] == 0.0 and out["qa"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match=r"tasks: got 1 names for 2 outcomes"):
        acc.update([True, True], "mcq")


def test_task_accuracy_task_names_are_distinct_and_a_str_is_one_name():
    assert TaskAccuracy(tasks="mcq").tasks == ("mcq",)
    from pixelqa.data.schema import TASKS

    assert TaskAccuracy().tasks == tuple(sorted(TASKS)) and "mcq" in TASKS
    with pytest.raises(ValueError, match=r"tasks: got 'mcq' more than once in \['mcq', 'res', 'mcq'\]"):
        TaskAccuracy(tasks=["mcq", "res", "mcq"])
    with pytest.raises(ValueError, match=r"tasks: got \[\], expected task names"):
        TaskAccuracy(tasks=[])
    acc = TaskAccuracy(tasks="my_task")
    acc.update([True], ["my_task"])
    assert acc.compute() == {"my_task": torch.tensor(1.0)}


def test_compute_before_update():
    # every score is NaN before the first update (cIoU was 0.0 beside a NaN gIoU) ...
    for metric in (ImageSegIoU(), RECAccuracy(), MCQAccuracy()):
        with pytest.warns(UserWarning, match="before the ``update``"):
            out = metric.compute()
        values = out.values() if isinstance(out, dict) else [out]
        assert all(math.isnan(float(v)) for v in values), (type(metric).__name__, out)
    with pytest.warns(UserWarning):
        assert math.isnan(float(CIoU().compute())) and math.isnan(float(GIoU().compute()))
    # ... except TaskAccuracy, whose keys are the tasks scored: none yet
    with pytest.warns(UserWarning):
        assert TaskAccuracy().compute() == {}
    seg = ImageSegIoU()
    seg.update(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool))
    out = seg.compute()  # an empty prediction of an empty target: a sample, so a number
    assert float(out["cIoU"]) == 0.0 and float(out["gIoU"]) == 1.0


# ---- MCQ and REC --------------------------------------------------------------------------------------------------


def test_mcq_accuracy_takes_numpy_integer_choices():
    acc = MCQAccuracy()
    logits = np.array([[0.1, 0.9], [0.8, 0.2]])
    acc.update(list(logits.argmax(1)), [np.int64(1), np.int32(1)], ["BQ", "SQ"])
    acc.update(np.array([2]), np.array([2]), "RQ")
    out = acc.compute()
    assert float(out["acc"]) == pytest.approx(2 / 3) and float(out["BQ"]) == 1.0 and float(out["SQ"]) == 0.0
    with pytest.raises(TypeError, match="got bool"):
        acc.update([True], [1], ["BQ"])


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, 2, float("nan"), "0.5", True])
def test_rec_accuracy_threshold_is_in_zero_one(bad):
    with pytest.raises(ValueError, match=r"iou_threshold: got .*, expected a number in \(0, 1\]"):
        RECAccuracy(iou_threshold=bad)


def test_rec_accuracy_threshold_one_means_the_exact_box():
    rec = RECAccuracy(iou_threshold=np.float32(1.0))
    rec.update(torch.tensor([[0, 0, 3, 3], [0, 0, 3, 2]]), torch.tensor([[0, 0, 3, 3], [0, 0, 3, 3]]))
    assert float(rec.compute()) == 0.5


# ---- imports ------------------------------------------------------------------------------------------------------


def test_importing_the_metrics_and_data_leaves_opencv_and_the_environment_alone(tmp_path):
    code = (
        "import json, os, sys; before = dict(os.environ); "
        "import pixelqa.metrics, pixelqa.metrics.protocols, pixelqa.data; "
        "print(json.dumps({'cv2': 'cv2' in sys.modules, 'env': dict(os.environ) == before}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"cv2": False, "env": True}
    # protocols still use OpenCV where needed: a 3-pixel speck is dropped before the REC box
    from pixelqa.metrics.protocols import rec_pred_box

    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[18, 17:20] = True
    assert rec_pred_box(mask) == [2, 2, 11, 11]
