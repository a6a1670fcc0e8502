"""PixelQA: an experiment platform for pixel-level visual reasoning in the UniPixel style."""

__version__ = "0.1.0"
