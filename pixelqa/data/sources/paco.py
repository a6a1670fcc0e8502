"""The part-segmentation family: COCO-format JSON whose category names are "object:part" (PACO-LVIS, PASCAL-Part).

Raw layout of PACO-LVIS (the PACO release, as LISA / UniPixel-SFT-1M use it under `lisa/vlpart/paco/`)::

    <root>/annotations/paco_lvis_v1_{train,val,test}.json   {images, annotations, categories}
    COCO 2017 images at <root>/<file_name>, <root>/coco/<file_name> or <root>/../coco/<file_name>
                                                             (file_name is like "train2017/000000000009.jpg")

Category names are "dog" (whole object) or "dog:leg", LVIS-style with a "_(sense)" suffix and
underscores ("car_(automobile):wheel" -> object "car", part "wheel"). Every category present in an
image becomes one object (the union of its annotations, so the request has one right answer) and one
independent request/<|seg|> turn pair ("car wheel" or "wheel of the car", chosen per sample).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected
from pixelqa.data.schema import ObjectTrack, Sample, make_key
from pixelqa.data.sources._image_files import (
    cached_json,
    check_size,
    first_existing,
    read_image,
    require,
    segmentation_rle,
)
from pixelqa.data.sources._instructions import choose
from pixelqa.data.sources.semseg import class_samples


def _clean(name: str) -> str:
    """LVIS-style name -> words: drop a "_(sense)" suffix, underscores to spaces."""
    return " ".join(name.split("_(")[0].replace("_", " ").split())


def split_part_name(name: str) -> tuple[str, str | None]:
    """ "object:part" -> (object, part); a plain object name -> (object, None)."""
    pieces = name.strip().split(":")
    if len(pieces) == 1:
        return _clean(pieces[0]), None
    if len(pieces) == 2:
        return _clean(pieces[0]), _clean(pieces[1])
    raise ValueError(f"category name: got {name!r}, expected 'object' or 'object:part'")


def part_phrase(name: str, *parts: object) -> str:
    """The phrase asked for: "dog", or "dog leg" / "leg of the dog" (stable choice per `parts`)."""
    obj, part = split_part_name(name)
    if part is None:
        return obj
    return choose(("{o} {p}", "{p} of the {o}"), "part", *parts).format(o=obj, p=part)


@dataclass
class CocoIndex:
    """A COCO JSON indexed by image."""

    images: dict[int, dict]
    anns_by_image: dict[int, list[dict]]
    cats: dict[int, str]


@functools.lru_cache(maxsize=2)
def load_coco(path: str) -> CocoIndex:
    """Parse and index a COCO-format JSON once per process."""
    data = cached_json(path)
    images = {int(require(im, "id", f"{path} images[]")): im for im in require(data, "images", path)}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in require(data, "annotations", path):
        by_image[int(require(ann, "image_id", f"{path} annotations[]"))].append(ann)
    cats = {
        int(require(c, "id", f"{path} categories[]")): str(require(c, "name", f"{path} categories[]"))
        for c in require(data, "categories", path)
    }
    return CocoIndex(images=images, anns_by_image=dict(by_image), cats=cats)


class CocoPartSource(Source):
    """Base converter; subclasses implement `annotation_file` and `image_roots`."""

    def annotation_file(self, root: Path, split: str) -> Path:
        """The split's COCO JSON."""
        raise NotImplementedError

    def image_roots(self, root: Path) -> list[Path]:
        """Folders that `file_name` is relative to, tried in order."""
        raise NotImplementedError

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The split's COCO JSON."""
        return [self.annotation_file(Path(root), split)]

    def _index(self, root: Path, split: str) -> CocoIndex:
        self.check_split(split)
        return load_coco(str(self.annotation_file(Path(root), split)))

    def items(self, root: Path, split: str) -> list[int]:
        """Image ids with at least one annotation, sorted."""
        return sorted(self._index(root, split).anns_by_image)

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """One sample per image, with all its categories."""
        root = Path(root)
        index = self._index(root, split)
        if int(item) not in index.images:
            raise ValueError(f"{self.name}: image id {item} of the annotations is not in 'images'")
        img = index.images[int(item)]
        file_name = str(require(img, "file_name", f"image {item}"))
        image = read_image(first_existing([r / file_name for r in self.image_roots(root)], f"image {file_name}"))
        check_size(image.size, img.get("height"), img.get("width"), f"image {item}")
        h, w = image.size
        by_cat: dict[int, list[dict]] = defaultdict(list)
        for ann in index.anns_by_image.get(int(item), []):
            by_cat[int(require(ann, "category_id", f"annotation of image {item}"))].append(ann)
        objects: dict[int, ObjectTrack] = {}
        entries = []  # (phrase, object id, category id)
        for cid in sorted(by_cat):
            if cid not in index.cats:
                raise ValueError(f"{self.name}: category_id {cid} of image {item} is not in 'categories'")
            rles = [
                segmentation_rle(
                    require(a, "segmentation", f"annotation {a.get('id')}"),
                    h,
                    w,
                    f"annotation {a.get('id')}.segmentation",
                )
                for a in by_cat[cid]
            ]
            rle = rles[0] if len(rles) == 1 else masks.merge(rles)
            if masks.area(rle) == 0:
                reason = (
                    f"{self.name} image {item} ({file_name}): category {cid}: empty region, expected a visible mask"
                )
                yield rejected(self.name, split, "semseg", make_key(item, "category", cid), reason)
                continue
            oid = len(objects) + 1
            phrase = part_phrase(index.cats[cid], item, cid)
            objects[oid] = ObjectTrack(masks={0: rle}, category=phrase)
            entries.append((phrase, oid, cid))
        meta = {"image_id": int(item), "file_name": file_name}
        for sample in class_samples(
            self.name, split, item, image.media(file_name), objects, entries, meta, "category_id"
        ):
            for cls in sample.meta["classes"]:
                cls["name"] = index.cats[cls["category_id"]]  # the category's own name, not the part phrase
            yield sample


@register_source("paco_lvis")
class PACOLVIS(CocoPartSource):
    """PACO-LVIS v1: objects and their parts on COCO 2017 images."""

    splits = ("train", "val", "test")

    def annotation_file(self, root: Path, split: str) -> Path:
        """paco_lvis_v1_<split>.json under <root>/annotations (or <root>/paco/annotations, vlpart/paco/...)."""
        name = f"paco_lvis_v1_{split}.json"
        root = Path(root)
        bases = [root, root / "paco", root / "vlpart" / "paco"]
        return first_existing([b / "annotations" / name for b in bases], f"PACO-LVIS {name}")

    def image_roots(self, root: Path) -> list[Path]:
        """<root>, <root>/coco, <root>/../coco."""
        root = Path(root)
        return [root, root / "coco", root.parent / "coco"]
