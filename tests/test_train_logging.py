"""What a fit logs to MLflow as train/*: the objective it optimises (model.loss.mask=single too), a gap for a term no
sample of a step has, and the run's last step always (however it falls against trainer.log_every_n_steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fit_fixtures import mlflow_fit_args, mlflow_history

from pixelqa import fit
from pixelqa.model import unipixel as U


def _record_training_forwards(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """One entry per training forward: its mask-sample count and the (logits, targets, valid) of each sample's
    `mask_losses` call (model.loss.mask=single)."""
    forwards: list[dict] = []
    real_forward, real_mask_losses = U.UniPixel.forward, U.mask_losses

    def forward(self, batch, *args, **kwargs):
        if self.training:
            forwards.append({"masks": []})
        out = real_forward(self, batch, *args, **kwargs)
        if self.training:
            forwards[-1]["mask_samples"] = float(out.counts["mask_samples"])
        return out

    def mask_losses(logits, targets, valid, pred_ious, scores):
        if forwards and "mask_samples" not in forwards[-1]:  # inside a training forward
            forwards[-1]["masks"].append((logits.detach().double(), targets.clone(), valid.clone()))
        return real_mask_losses(logits, targets, valid, pred_ious, scores)

    monkeypatch.setattr(U.UniPixel, "forward", forward)
    monkeypatch.setattr(U, "mask_losses", mask_losses)
    return forwards


def _hand_dice(masks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float | None:
    """Soft dice loss 1 - (2 sum(p t) + 1) / (sum p + sum t + 1) of each annotated frame where the object is present,
    averaged over all of them (None without any), in float64 numpy."""
    losses = []
    for logits, targets, valid in masks:
        for k in range(logits.shape[0]):
            for t in range(logits.shape[1]):
                tgt = targets[k, t].numpy().astype(np.float64)
                if not bool(valid[k, t]) or not tgt.any():
                    continue
                p = 1.0 / (1.0 + np.exp(-logits[k, t].numpy()))
                losses.append(1.0 - (2.0 * (p * tgt).sum() + 1.0) / (p.sum() + tgt.sum() + 1.0))
    return float(np.mean(losses)) if losses else None


def test_single_mask_loss_logs_the_dice_it_optimises_by_hand(tmp_path, monkeypatch):
    forwards = _record_training_forwards(monkeypatch)
    extra = ("trainer.max_steps=3", "trainer.log_every_n_steps=1", "data.batch_size=4", "model.loss.mask=single")
    fit.run(mlflow_fit_args(tmp_path, "single", *extra))
    logged = mlflow_history(tmp_path, "single")
    assert len(forwards) == 3  # one micro-batch per step
    checked = []
    for step, forward in enumerate(forwards):
        expected = _hand_dice(forward["masks"])
        if expected is None:
            continue
        (value,) = logged["train/dice"][step]
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert 0.0 <= value <= 1.0
        masks = sum(int((v & t.flatten(2).any(2)).sum()) for _, t, v in forward["masks"])
        checked.append((masks, len(forward["masks"])))  # present annotated frames, samples with masks
    assert any(masks != samples for masks, samples in checked)  # a mean over samples would differ


def test_a_step_without_mask_samples_leaves_a_gap_in_the_mask_terms(tmp_path, monkeypatch):
    forwards = _record_training_forwards(monkeypatch)
    fit.run(
        mlflow_fit_args(tmp_path, "gaps", "trainer.max_steps=8", "trainer.log_every_n_steps=1", "data.batch_size=1")
    )
    logged = mlflow_history(tmp_path, "gaps")
    with_masks = {step for step, f in enumerate(forwards) if f["mask_samples"] > 0}
    assert len(forwards) == 8 and 0 < len(with_masks) < 8  # both kinds of step occur
    assert sorted(logged["train/loss"]) == list(range(8))
    assert sorted(logged["train/lm"]) == list(range(8))
    for term in ("focal", "dice", "iou", "objectness"):
        assert sorted(logged[f"train/{term}"]) == sorted(with_masks), term


@pytest.mark.parametrize("steps, every, expected", [(3, 10, [2]), (5, 2, [1, 3, 4])])
def test_the_last_step_is_logged_once_whatever_the_log_interval(tmp_path, steps, every, expected):
    fit.run(mlflow_fit_args(tmp_path, "run", f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={every}"))
    logged = mlflow_history(tmp_path, "run")
    lrs = [k for k in logged if k.startswith("lr-")]
    assert lrs  # the learning-rate monitor's curves
    for key in ["train/loss", "train/lm", *lrs]:
        assert sorted(logged[key]) == expected, key
        assert all(len(values) == 1 for values in logged[key].values()), key  # no step logged twice
