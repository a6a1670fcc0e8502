"""The semantic-segmentation family: one class-index PNG per image -> "segment the <class>" samples.

As in LISA's semantic-segmentation data (and UniPixel's stage 3), every class present in an image
becomes one object (the union of its pixels) and one independent request/<|seg|> turn pair. The label PNG
is read as class indices: a grayscale ('L') PNG gives its values, a palette ('P') PNG its palette
indices; RGB-coloured label images are refused. Subclasses (ADE20K, COCO-Stuff, Mapillary Vistas) say
where labels and images live and how values map to class names.

Accounting (one label PNG = one item = at most one sample, so samples written + rejects + skipped = label PNGs):
an image that yields no sample (only ignore pixels such as ADE's 0 'other', classes not asked for, or values
outside the release's labels) is a skipped item (not damage: counted in the manifest, never fatal) naming its
label file and the values it holds; pixels
whose value is no label of the release (damage: ADE20K has 0..150) are not asked for and are recorded in
the sample's meta["unknown_values"] ([{value, pixels}]), with a warning naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pixelqa.data import masks
from pixelqa.data.registry import Source, skipped
from pixelqa.data.schema import Media, ObjectTrack, Sample, make_key
from pixelqa.data.sources._image_files import read_image
from pixelqa.data.sources._instructions import seg_turns

log = logging.getLogger(__name__)


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

    def label_values(self, root: Path) -> dict[int, str]:
        """Every value the release defines -> its name: classes, classes not asked for, the ignore value."""
        return self.class_names(root)

    def items(self, root: Path, split: str) -> list[str]:
        """Label file stems, sorted."""
        self.check_split(split)
        return sorted(p.stem for p in self.label_dir(Path(root), split).glob("*.png"))

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """One sample per image (all its classes); an image with no class is a skipped item saying why."""
        root = Path(root)
        label_path = self.label_dir(root, split) / f"{item}.png"
        label = read_label_png(label_path)
        image = read_image(self.image_dir(root, split) / f"{item}{self.image_suffix}")
        if label.shape != image.size:
            raise ValueError(f"{label_path}: got label size {label.shape}, expected the image size {image.size}")
        names = self.class_names(root)
        known = self.label_values(root)
        present, pixels = np.unique(label, return_counts=True)
        counts = {int(v): int(n) for v, n in zip(present, pixels, strict=True)}
        values = [v for v in counts if v in names]
        unknown = [{"value": v, "pixels": n} for v, n in counts.items() if v not in names and v not in known]
        if unknown:
            # Damage, not a documented ignore value: the image keeps its classes, the count goes with the sample.
            bad = [u["value"] for u in unknown]
            log.warning(
                "%s: label values %s are no %s label; their pixels are not asked for", label_path, bad, self.name
            )
        if not values:
            held = ", ".join(
                f"{v} ({known[v]}, not asked for)" if v in known else f"{v} (no {self.name} label)" for v in counts
            )
            reason = f"{label_path}: no class to ask for, the label holds only values {held}"
            yield skipped(self.name, split, "semseg", make_key(item), reason)
            return
        objects = {
            i + 1: ObjectTrack(masks={0: masks.encode(label == v)}, category=names[v]) for i, v in enumerate(values)
        }
        entries = [(names[v], i + 1, v) for i, v in enumerate(values)]
        meta: dict = {"image": item}
        if unknown:
            meta["unknown_values"] = unknown
        yield from class_samples(self.name, split, item, image.media(item), objects, entries, meta, "value")


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
        return  # nothing to ask; callers count such an image (SemSegSource: a skipped item, PACO: its category rejects)
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
