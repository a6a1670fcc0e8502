"""The model the demo serves: `tiny` (the tiny configuration, random weights, CPU) or any model predict loads."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.loading import load_model, pick_device

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

TINY = "tiny"


def build_tiny(device: str | None = "cpu", seed: int = 0) -> tuple[UniPixel, dict[str, Any]]:
    """(UniPixel, info): the tiny configuration with random weights, for trying the demo without any download."""
    from pixelqa.model import UniPixel
    from pixelqa.model.config import UniPixelConfig

    dev = pick_device(device)
    cfg = UniPixelConfig(preset="tiny", seed=seed)
    # random weights give object scores near zero, which would gate every mask away; without the gate the
    # untrained decoder still draws a mask around the prompt, so the page has something to show
    cfg.mask_decoder.pred_obj_scores = False
    model = UniPixel(cfg).to(dev).eval()
    info = {"path": TINY, "format": "tiny (random weights)", "device": str(dev), "dtype": cfg.dtype}
    info["config"] = asdict(cfg)
    return model, info


def resolve_model(spec: str, device: str | None = None, trust: bool = False) -> tuple[UniPixel, dict[str, Any]]:
    """(model, info) for `--model`: `tiny` (CPU unless a device is named) or a path predict's load_model takes."""
    if spec == TINY and not Path(spec).exists():
        return build_tiny("cpu" if device in (None, "auto") else device)
    if not Path(spec).exists():
        raise PredictInputError(f"--model: {spec!r} does not exist; expected 'tiny', a model folder or a checkpoint")
    return load_model(spec, device, trust)
