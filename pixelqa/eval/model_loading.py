"""The model an evaluation scores: the recipe's network with a `pixelqa.fit` checkpoint's weights (or untrained)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixelqa.checkpoints import CheckpointError
from pixelqa.config import RecipeError


def resolve_eval_ckpt(ckpt: str | None, output_dir: str) -> Path | None:
    """The checkpoint to score: None (untrained), `last`, or a path; checked to exist."""
    if ckpt in (None, "", "none", "null"):
        return None
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise RecipeError(f"ckpt={ckpt}: no checkpoint at {path}; give a .ckpt written by pixelqa.fit")
    return path


def load_model(recipe: Any, ckpt_path: Path | None) -> torch.nn.Module:
    """The UniPixel network of the recipe, with the checkpoint's weights (stage taken from the checkpoint)."""
    from omegaconf import OmegaConf

    from pixelqa.train.module import model_from_checkpoint, read_checkpoint

    ckpt = None
    if ckpt_path is not None:
        try:
            ckpt = read_checkpoint(ckpt_path, bool(getattr(recipe, "trust_checkpoint", False)), what="ckpt")
        except CheckpointError as err:
            raise RecipeError(str(err)) from None
    model_cfg = OmegaConf.to_container(OmegaConf.structured(recipe.model))
    return model_from_checkpoint(model_cfg, ckpt, str(ckpt_path), recipe.stage, recipe.seed)
