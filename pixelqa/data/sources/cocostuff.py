"""COCO-Stuff 164K (stuffthingmaps, 182 indices: 80 things + 91 stuff + 11 unused) as class-name segmentation.

Raw layout (the official `stuffthingmaps_trainval2017.zip` next to COCO 2017 images; UniPixel-SFT-1M ships
them as `lisa/cocostuff/` and `lisa/coco/`)::

    <root>/stuffthingmaps_trainval2017/{train2017,val2017}/000000000009.png   (or cocostuff/, annotations/)
    <root>/{train2017,val2017}/000000000009.jpg                               (or coco/, images/)

Label PNGs are grayscale, 0-based (0 = person ... 181 = wood), 255 = unlabeled. As in LISA, the classes
whose names carry a hyphen ('wall-brick', 'floor-other', ...) are not asked for: their names are not
phrases a user would say. An image with nothing else (only such classes and 255) is a counted reject;
values 182..254 are damage, recorded in meta["unknown_values"] (see `semseg`).
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data.registry import register_source
from pixelqa.data.sources._image_files import first_existing
from pixelqa.data.sources.semseg import SemSegSource

COCOSTUFF_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
assert len(COCOSTUFF_NAMES) == 182

_SPLIT_DIRS = {"train": "train2017", "val": "val2017"}


@register_source("cocostuff")
class COCOStuff(SemSegSource):
    """COCO-Stuff 164K train (118K images) / val (5K)."""

    splits = ("train", "val")

    def label_dir(self, root: Path, split: str) -> Path:
        """The stuffthingmaps folder of the split."""
        s = _SPLIT_DIRS[split]
        names = ("stuffthingmaps_trainval2017", "cocostuff", "stuffthingmaps", "annotations")
        return first_existing([Path(root) / n / s for n in names], f"COCO-Stuff {split} label folder")

    def image_dir(self, root: Path, split: str) -> Path:
        """The COCO 2017 image folder of the split."""
        s = _SPLIT_DIRS[split]
        root = Path(root)
        return first_existing([root / "coco" / s, root / "images" / s, root / s], f"COCO {s} image folder")

    def class_names(self, root: Path) -> dict[int, str]:
        """0..181 -> name, without the hyphenated stuff classes; 255 (unlabeled) is not a class."""
        return {i: n for i, n in enumerate(COCOSTUFF_NAMES) if "-" not in n}

    def label_values(self, root: Path) -> dict[int, str]:
        """0..181 (hyphenated classes included) and 255 (unlabeled); 182..254 are damage."""
        return {**dict(enumerate(COCOSTUFF_NAMES)), 255: "unlabeled"}
