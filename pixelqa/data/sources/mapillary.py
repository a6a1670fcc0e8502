"""Mapillary Vistas v2.0 (124 labels) as class-name segmentation.

Raw layout (the official release; UniPixel-SFT-1M ships it as `lisa/mapillary/`)::

    <root>/config_v2.0.json                          {"labels": [{"name", "readable", "color", ...}, ...]}
    <root>/{training,validation}/images/<id>.jpg
    <root>/{training,validation}/v2.0/labels/<id>.png   palette PNG, index = position in config labels

Class names are the config's `readable` names, lower-cased; the 'Unlabeled' label is not a class.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pixelqa.data.registry import register_source
from pixelqa.data.sources._image_files import first_existing, read_json, require
from pixelqa.data.sources.semseg import SemSegSource

_SPLIT_DIRS = {"train": "training", "val": "validation"}


@functools.lru_cache(maxsize=4)
def mapillary_labels(config_path: str) -> dict[int, str]:
    """Palette index -> lower-cased readable name, for every label of config_v2.0.json ('unlabeled' included)."""
    labels = require(read_json(config_path), "labels", config_path)
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"{config_path}.labels: got {labels!r:.60}, expected a non-empty list of labels")
    return {
        i: str(require(lab, "readable", f"{config_path}.labels[{i}]")).strip().lower() for i, lab in enumerate(labels)
    }


def mapillary_names(config_path: str) -> dict[int, str]:
    """The labels asked for: all but 'unlabeled'."""
    return {i: n for i, n in mapillary_labels(config_path).items() if n != "unlabeled"}


@register_source("mapillary")
class MapillaryVistas(SemSegSource):
    """Mapillary Vistas v2.0 training (18,000 images) / validation (2,000)."""

    splits = ("train", "val")

    def _base(self, root: Path) -> Path:
        root = Path(root)
        return first_existing(
            [root / "config_v2.0.json", root / "mapillary" / "config_v2.0.json"], "Mapillary Vistas config_v2.0.json"
        ).parent

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The label config (the label PNGs are too many to checksum one by one)."""
        return [self._base(root) / "config_v2.0.json"]

    def label_dir(self, root: Path, split: str) -> Path:
        """<root>/<training|validation>/v2.0/labels."""
        d = self._base(root) / _SPLIT_DIRS[split] / "v2.0" / "labels"
        return first_existing([d], f"Mapillary Vistas {split} v2.0 labels")

    def image_dir(self, root: Path, split: str) -> Path:
        """<root>/<training|validation>/images."""
        return first_existing([self._base(root) / _SPLIT_DIRS[split] / "images"], f"Mapillary Vistas {split} images")

    def class_names(self, root: Path) -> dict[int, str]:
        """From config_v2.0.json."""
        return mapillary_names(str(self._base(root) / "config_v2.0.json"))

    def label_values(self, root: Path) -> dict[int, str]:
        """Every config label ('unlabeled' included); a palette index past the config's labels is damage."""
        return mapillary_labels(str(self._base(root) / "config_v2.0.json"))
