"""The semantic-segmentation family: one class-index PNG per image -> "segment the <class>" samples.

As in LISA's semantic-segmentation data (and UniPixel's stage 3), every class present in an image
becomes one object (the union of its pixels) and one independent request/<|seg|> turn pair. The label PNG
is read as class indices: a grayscale ('L') PNG gives its values, a palette ('P') PNG its palette
indices; RGB-coloured label images are refused. Subclasses (ADE20K, COCO-Stuff, Mapillary Vistas) say
where labels and images live and how values map to class names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pixelqa.data import masks
from pixelqa.data.registry import Source
from pixelqa.data.schema import Media, ObjectTrack, Sample, make_key
from pixelqa.data.sources._image_files import read_image
from pixelqa.data.sources._instructions import seg_turns


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) integer class indices of a label PNG (grayscale values or palette indices)."""
    if not path.is_file():
        raise FileNotFoundError(f"label image not found: {path}")
    with Image.open(path) as im:
        mode = im.mode
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(
            f"{path}: got a {mode} image of shape {arr.shape}, expected a single-channel class-index PNG "
            "(grayscale or palette)"
        )
    return arr.astype(np.int64)


class SemSegSource(Source):
    """Base converter; subclasses implement `label_dir`, `image_dir` and `class_names`."""

    image_suffix: str = ".jpg"

    def label_dir(self, root: Path, split: str) -> Path:
        """Folder of the split's label PNGs."""
        raise NotImplementedError

    def image_dir(self, root: Path, split: str) -> Path:
        """Folder of the split's images (same stem as the label)."""
        raise NotImplementedError

    def class_names(self, root: Path) -> dict[int, str]:
        """Label value -> class name, for the values that become objects (others are ignored)."""
        raise NotImplementedError

    def items(self, root: Path, split: str) -> list[str]:
        """Label file stems, sorted."""
        self.check_split(split)
        return sorted(p.stem for p in self.label_dir(Path(root), split).glob("*.png"))

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """One sample per image (all its classes); images with no class yield none."""
        root = Path(root)
        label_path = self.label_dir(root, split) / f"{item}.png"
        label = read_label_png(label_path)
        image = read_image(self.image_dir(root, split) / f"{item}{self.image_suffix}")
        if label.shape != image.size:
            raise ValueError(f"{label_path}: got label size {label.shape}, expected the image size {image.size}")
        names = self.class_names(root)
        values = [int(v) for v in np.unique(label) if int(v) in names]
        objects = {
            i + 1: ObjectTrack(masks={0: masks.encode(label == v)}, category=names[v]) for i, v in enumerate(values)
        }
        entries = [(names[v], i + 1, v) for i, v in enumerate(values)]
        yield from class_samples(self.name, split, item, image.media(item), objects, entries, {"image": item}, "value")


def class_samples(
    source: str,
    split: str,
    item: str,
    media: Media,
    objects: dict[int, ObjectTrack],
    entries: list[tuple[str, int, int]],
    meta: dict,
    class_field: str,
) -> Iterator[Sample]:
    """The sample of one image whose objects are named classes: one request/<|seg|> pair per class, all in one sample.

    entries are (class name, object id, class value); `class_field` names the value in meta["classes"].
    """
    if not entries:
        return  # an image showing none of the named classes (only ignore / unlabeled pixels) asks nothing
    key = make_key(item)
    yield Sample(
        key=key,
        source=source,
        split=split,
        task="semseg",
        media=media,
        objects={oid: objects[oid] for _, oid, _ in entries},
        turns=seg_turns([(name, oid) for name, oid, _ in entries], key),
        meta={
            **meta,
            "independent_turns": True,
            "classes": [{class_field: v, "name": name, "object_id": oid} for name, oid, v in entries],
        },
    )
