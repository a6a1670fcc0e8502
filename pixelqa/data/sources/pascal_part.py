"""PASCAL-Part in the COCO-format JSON of VLPart (what LISA and UniPixel-SFT-1M use), as part segmentation.

Raw layout (`lisa/vlpart/pascal_part/` in UniPixel-SFT-1M)::

    <root>/train.json, <root>/val.json        COCO format, category names "person:hair", "dog:leg", ...
    <root>/VOCdevkit/VOC2010/JPEGImages/<file_name>

Sample shape: see `pixelqa.data.sources.paco` (one object per category present in an image).
The original PASCAL-Part release (per-image MATLAB files) is not read: convert it with VLPart's script first.
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data.registry import register_source
from pixelqa.data.sources._image_files import first_existing
from pixelqa.data.sources.paco import CocoPartSource


@register_source("pascal_part")
class PASCALPart(CocoPartSource):
    """PASCAL-Part (VOC2010 images, 93 part categories in VLPart's JSON)."""

    splits = ("train", "val")

    @staticmethod
    def _bases(root: Path) -> list[Path]:
        root = Path(root)
        return [root, root / "pascal_part", root / "vlpart" / "pascal_part"]

    def annotation_file(self, root: Path, split: str) -> Path:
        """<root>/<split>.json (or <root>/pascal_part/<split>.json, vlpart/pascal_part/...)."""
        return first_existing([b / f"{split}.json" for b in self._bases(root)], f"PASCAL-Part {split}.json")

    def image_roots(self, root: Path) -> list[Path]:
        """The VOC2010 JPEGImages folder next to the JSON."""
        return [b / "VOCdevkit" / "VOC2010" / "JPEGImages" for b in self._bases(root)]
