"""`pixelqa.eval.seg_selection`: a mask is classed by the object it overlaps most (hand-made masks), and the CLI
scores a saved model end to end; a missing model exits 2 with one line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pixelqa.data.synthetic import make_sample
from pixelqa.eval.seg_selection import SEG_TASKS, candidates_of, classify
from pixelqa.model.config import UniPixelConfig
from pixelqa.model.unipixel import UniPixel


def _objects() -> torch.Tensor:
    """Two objects over 2 frames of 8 x 8: a 2 x 2 square top left, a 3 x 3 square bottom right."""
    m = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    m[0, :, 1:3, 1:3] = True
    m[1, :, 4:7, 4:7] = True
    return m


def test_classify_by_the_object_overlapped_most():
    obj = _objects()
    assert classify(obj[0], obj, 0) == ("target", 1.0, 1.0)
    assert classify(obj[1], obj, 0) == ("other", 0.0, 1.0)
    assert classify(torch.zeros(2, 8, 8, dtype=torch.bool), obj, 1) == ("empty", 0.0, 0.0)
    shifted = obj[0].roll(1, dims=-1)  # one pixel right: half of it still on the target
    kind, iou_t, iou_b = classify(shifted, obj, 0)
    assert kind == "target" and iou_t == pytest.approx(4 / 12) and iou_b == iou_t
    with pytest.raises(ValueError, match="target: got 2"):
        classify(obj[0], obj, 2)
    with pytest.raises(ValueError, match="pred/objects"):
        classify(obj[0, 0], obj, 0)


def test_candidates_are_scored_by_the_object_they_cover_and_by_rank():
    objects = torch.zeros(2, 8, 8, dtype=torch.bool)
    objects[0, :, :4], objects[1, :, 4:] = True, True
    logits = torch.full((3, 8, 8), -5.0)
    logits[0][objects[1]] = 5.0  # candidate 0: the other object
    logits[1][objects[0]] = 5.0  # candidate 1: the target
    assert candidates_of(logits, torch.tensor([0.9, 0.2, 0.1]), objects, 0) == (True, False)
    assert candidates_of(logits, torch.tensor([0.2, 0.9, 0.1]), objects, 0) == (True, True)
    assert candidates_of(logits, torch.tensor([0.2, 0.9, 0.1]), objects, 1) == (True, False)
    shifted = logits.clone()
    shifted[1] = torch.roll(logits[1], 4, dims=1)  # now a mask of object 1 as well
    assert candidates_of(shifted, torch.tensor([0.2, 0.9, 0.1]), objects, 0) == (False, False)
    with pytest.raises(ValueError, match="logits/ious/objects"):
        candidates_of(logits, torch.tensor([0.9, 0.2]), objects, 0)


@pytest.mark.slow
def test_cli_scores_a_saved_model(tmp_path):
    UniPixel(UniPixelConfig()).save_pretrained(tmp_path / "m")
    run = subprocess.run(
        [sys.executable, "-m", "pixelqa.eval.seg_selection", str(tmp_path / "m"), "--samples", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["samples"] == 2 * len(SEG_TASKS)
    assert out["target"] + out["other"] + out["empty"] == pytest.approx(1.0)
    chance = np.mean([1 / len(make_sample(i, split="val", task=t).objects) for t in SEG_TASKS for i in range(2)])
    assert out["chance"] == pytest.approx(chance, abs=1e-4)
    assert 0.0 <= out["iou_target"] <= out["iou_best"] <= 1.0
    assert 0.0 <= out["target_ranked_first"] <= out["target_in_candidates"] <= 1.0


def test_cli_missing_model_exits_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pixelqa.eval.seg_selection", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "does not exist" in run.stderr and "Traceback" not in run.stderr
