"""ADE20K (SceneParsing ADEChallengeData2016, 150 classes) as class-name segmentation.

Raw layout (the challenge release; UniPixel-SFT-1M ships it as `lisa/ade20k/`)::

    <root>/images/{training,validation}/ADE_train_00000001.jpg
    <root>/annotations/{training,validation}/ADE_train_00000001.png    grayscale, 0 = other, v = class v

`<root>` may also be the folder that holds `ADEChallengeData2016/` or `ade20k/`. An image with no class (all 0)
is a counted reject; values above 150 are damage, recorded in meta["unknown_values"] (see `semseg`).
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data.registry import register_source
from pixelqa.data.sources._image_files import first_existing
from pixelqa.data.sources.semseg import SemSegSource

# value v (1..150) -> ADE150_NAMES[v - 1]: the first name of each class in objectInfo150
ADE150_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
assert len(ADE150_NAMES) == 150

_SPLIT_DIRS = {"train": "training", "val": "validation"}


@register_source("ade20k")
class ADE20K(SemSegSource):
    """ADE20K train (20,210 images) / val (2,000)."""

    splits = ("train", "val")

    def _base(self, root: Path) -> Path:
        return first_existing(
            [root / "annotations", root / "ADEChallengeData2016" / "annotations", root / "ade20k" / "annotations"],
            "ADE20K annotations folder",
        ).parent

    def label_dir(self, root: Path, split: str) -> Path:
        """<root>/annotations/<training|validation>."""
        return first_existing([self._base(root) / "annotations" / _SPLIT_DIRS[split]], f"ADE20K {split} labels")

    def image_dir(self, root: Path, split: str) -> Path:
        """<root>/images/<training|validation>."""
        return first_existing([self._base(root) / "images" / _SPLIT_DIRS[split]], f"ADE20K {split} images")

    def class_names(self, root: Path) -> dict[int, str]:
        """1..150 -> name; 0 ('other') is not a class."""
        return {i + 1: n for i, n in enumerate(ADE150_NAMES)}

    def label_values(self, root: Path) -> dict[int, str]:
        """0 ('other') and 1..150; any other value is damage (counted in the sample's meta)."""
        return {0: "other", **self.class_names(root)}
