"""The model the demo serves: `tiny` (the tiny configuration, random weights, CPU) or any model predict loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelqa.predict.loading import load_model

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel


def resolve_model(spec: str | Path, device: str | None = None, trust: bool = False) -> tuple[UniPixel, dict[str, Any]]:
    """(model, info) for `--model`: `tiny` (random weights, CPU unless a device is named; `predict.loading.build_tiny`)
    or a model folder / checkpoint, loaded exactly as `python -m pixelqa.predict --model` loads it."""
    return load_model(spec, device, trust)
