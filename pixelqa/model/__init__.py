"""The UniPixel network: Qwen2.5-VL backbone, visual prompt encoders, projectors, SAM 2.1 decoder, memory bank.

Imports nothing from `pixelqa.data`, `pixelqa.train` or Lightning.
"""

from pixelqa.model.backbone import build_processor
from pixelqa.model.chat import Box, ChatResult, ChatState, Mask, Point
from pixelqa.model.config import UniPixelConfig
from pixelqa.model.memory import ObjectMemoryBank
from pixelqa.model.unipixel import UniPixel, UniPixelOutput

__all__ = [
    "Box",
    "ChatResult",
    "ChatState",
    "Mask",
    "ObjectMemoryBank",
    "Point",
    "UniPixel",
    "UniPixelConfig",
    "UniPixelOutput",
    "build_processor",
]
