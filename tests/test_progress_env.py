"""TQDM_DISABLE turns off every progress bar PixelQA draws: predict's and fit's (Lightning passes `disable` to tqdm
itself, so tqdm never reads the variable there)."""

from __future__ import annotations

import pytest

from pixelqa.config import load_recipe, to_object
from pixelqa.quiet import progress_enabled
from pixelqa.train.callbacks import build_callbacks


@pytest.mark.parametrize(("value", "on"), [("", True), ("0", True), ("off", True), ("1", False), ("true", False)])
def test_tqdm_disable_decides_fits_progress_bar(tmp_path, monkeypatch, value, on):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from pixelqa.fit import build_trainer

    monkeypatch.setenv("TQDM_DISABLE", value)
    recipe = to_object(load_recipe(["recipe=stage3", f"output_dir={tmp_path}", "tracking=none"]))
    assert recipe.trainer.enable_progress_bar and progress_enabled(True) is on
    callbacks = build_callbacks(recipe, tmp_path / "checkpoints", None)
    assert any(isinstance(c, TQDMProgressBar) for c in callbacks) is on
    trainer = build_trainer(recipe, None, callbacks, 1)
    assert any(isinstance(c, TQDMProgressBar) for c in trainer.callbacks) is on  # Lightning adds no default bar
