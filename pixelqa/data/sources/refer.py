"""The refer family (RefCOCO, RefCOCO+, RefCOCOg, RefClef): `refs(<splitBy>).p` + `instances.json`.

Raw layout (the refer toolkit's `data/` folder; LISA / UniPixel-SFT-1M ship it unchanged as
`lisa/refer_seg/`)::

    <root>/<dataset>/refs(<splitBy>).p     pickle: list of refs {ref_id, ann_id, image_id, category_id,
                                           split, sentences: [{sent_id, sent, raw, tokens}], ...}
    <root>/<dataset>/instances.json        COCO-style {images, annotations, categories}; segmentation is
                                           polygons (refcoco*) or a list of RLE dicts (refclef)
    <root>/images/mscoco/images/train2014/ COCO_train2014_*.jpg        (refcoco, refcoco+, refcocog)
    <root>/images/saiapr_tc-12/            <file_name> of instances.json (refclef)

`<root>` may also be the `<dataset>` folder itself. Training groups all expressions of an image into one
sample (independent turn pairs, as UniPixel samples a few expressions per image per visit); other splits
give one sample per expression with the ids and the ground-truth box that RES / REC evaluation needs.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelqa.data import masks
from pixelqa.data.registry import Source, rejected
from pixelqa.data.schema import ObjectTrack, Sample, make_key
from pixelqa.data.sources._image_files import (
    cached_json,
    cached_pickle,
    check_size,
    first_existing,
    read_image,
    require,
    segmentation_rle,
)
from pixelqa.data.sources._instructions import seg_turns

COCO_IMAGE_DIRS: tuple[str, ...] = ("images/mscoco/images/train2014", "images/train2014", "train2014")
CLEF_IMAGE_DIRS: tuple[str, ...] = ("images/saiapr_tc-12", "saiapr_tc-12")


@dataclass
class ReferIndex:
    """The parsed annotation files of one (dataset, splitBy)."""

    images: dict[int, dict]
    anns: dict[int, dict]
    cats: dict[int, str]
    refs: list[dict]


@functools.lru_cache(maxsize=2)
def load_refer(dataset_dir: str, split_by: str) -> ReferIndex:
    """Parse refs(<split_by>).p and instances.json of a dataset folder (once per process)."""
    d = Path(dataset_dir)
    refs_path = d / f"refs({split_by}).p"
    refs = cached_pickle(str(refs_path))
    if not isinstance(refs, list):
        raise TypeError(f"{refs_path}: got a {type(refs).__name__}, expected a list of refs")
    inst_path = d / "instances.json"
    inst = cached_json(str(inst_path))
    where = str(inst_path)
    images = {int(require(im, "id", f"{where} images[]")): im for im in require(inst, "images", where)}
    anns = {int(require(a, "id", f"{where} annotations[]")): a for a in require(inst, "annotations", where)}
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in inst.get("categories", [])}
    return ReferIndex(images=images, anns=anns, cats=cats, refs=refs)


def ref_in_split(ref_split: str, split: str) -> bool:
    """The refer toolkit's split matching: testA/testB/testC also match combined splits like 'testAB'."""
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    if split == "test":
        return ref_split.startswith("test")
    return ref_split == split


def xywh_to_xyxy(box: Any, where: str) -> list[float]:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2]."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"{where}: got {box!r}, expected a COCO box [x, y, w, h]")
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def sentence(s: Any, where: str) -> tuple[int, str]:
    """(sent_id, text) of a refs sentence; ValueError / TypeError naming it when a field is missing or wrong."""
    sent_id = require(s, "sent_id", where)
    text = require(s, "sent", f"{where} (sent_id {sent_id})")
    try:
        sent_id = int(sent_id)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: sent_id {sent_id!r} is not an integer") from None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where} (sent_id {sent_id}): got sent {text!r}, expected a non-empty expression")
    return sent_id, text


class ReferSource(Source):
    """Converter base for one refer dataset; subclasses set `dataset`, `split_by`, `image_dirs`, `splits`."""

    dataset: str = ""
    split_by: str = "unc"
    image_dirs: tuple[str, ...] = COCO_IMAGE_DIRS

    def dataset_dir(self, root: Path) -> Path:
        """The folder holding refs(<splitBy>).p: <root>/<dataset>, or <root> itself."""
        root = Path(root)
        refs_name = f"refs({self.split_by}).p"
        return first_existing([root / self.dataset / refs_name, root / refs_name], f"{self.dataset} {refs_name}").parent

    def image_dir(self, root: Path) -> Path:
        """The image folder: searched under <root> and, for a <dataset>-folder root, under its parent."""
        root = Path(root)
        bases = [root] if (root / self.dataset).is_dir() else [root, root.parent]
        return first_existing([b / d for b in bases for d in self.image_dirs], f"{self.dataset} image folder")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The refs pickle and instances.json."""
        d = self.dataset_dir(root)
        return [d / f"refs({self.split_by}).p", d / "instances.json"]

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few (root, split) pairs per process, sources live forever
    def _refs_by_image(self, root: Path, split: str) -> dict[int, list[dict]]:
        """Refs of a split grouped by image id (each group sorted by ref_id)."""
        self.check_split(split)
        index = load_refer(str(self.dataset_dir(root)), self.split_by)
        groups: dict[int, list[dict]] = defaultdict(list)
        for i, ref in enumerate(index.refs):
            where = f"refs({self.split_by}).p[{i}]"
            if ref_in_split(str(require(ref, "split", where)), split):
                groups[int(require(ref, "image_id", where))].append(ref)
        return {k: sorted(v, key=lambda r: int(r["ref_id"])) for k, v in groups.items()}

    def items(self, root: Path, split: str) -> list[int]:
        """Image ids that have refs in `split`, sorted."""
        return sorted(self._refs_by_image(Path(root), split))

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """The samples of one image: one grouped sample (train) or one per expression (other splits)."""
        root = Path(root)
        index = load_refer(str(self.dataset_dir(root)), self.split_by)
        refs = self._refs_by_image(root, split).get(int(item), [])
        refs_name = f"{self.dataset_dir(root) / f'refs({self.split_by}).p'}"
        file_name = "?"
        try:
            if int(item) not in index.images:
                raise ValueError(f"{self.dataset} instances.json: image id {item} of the refs is not in 'images'")
            img = index.images[int(item)]
            file_name = str(require(img, "file_name", f"instances.json image {item}"))
            image = read_image(self.image_dir(root) / file_name)
            check_size(image.size, img.get("height"), img.get("width"), f"instances.json image {item}")
        except (OSError, ValueError, TypeError) as e:
            # The image takes every sample on it along: one reject per lost sample, so that samples written plus
            # rejects add up to the samples the split holds (a raise would count the whole image as one).
            yield from self._image_rejects(split, item, file_name, refs, f"{type(e).__name__}: {e}")
            return
        h, w = image.size
        entries = []  # (ref, ann, rle, sentences as (sent_id, text))
        for ref in refs:
            where = f"{refs_name} ref_id {ref.get('ref_id')} (image {item}, {file_name})"
            try:
                ann_id = int(require(ref, "ann_id", where))
                if ann_id not in index.anns:
                    raise ValueError(f"ann_id {ann_id} is not in instances.json 'annotations'")
                ann = index.anns[ann_id]
                seg = require(ann, "segmentation", f"annotation {ann_id}")
                rle = segmentation_rle(seg, h, w, f"instances.json annotation {ann_id}.segmentation")
                sentences = require(ref, "sentences", where)
                if not isinstance(sentences, list):
                    raise TypeError(f"sentences: got {type(sentences).__name__}, expected a list of sentences")
                if split == "train" and masks.area(rle) == 0:
                    raise ValueError(f"instances.json annotation {ann_id}: empty region, expected a visible mask")
                if split != "train":  # checked here so that a bad box loses this ref's samples only
                    xywh_to_xyxy(require(ann, "bbox", f"annotation {ann_id}"), f"annotation {ann_id}.bbox")
            except (ValueError, TypeError) as e:
                yield from self._rejects(split, item, ref, f"{where}: {e}" if where not in str(e) else str(e))
                continue
            good = []
            for i, s in enumerate(sentences):
                try:
                    good.append(sentence(s, f"{where} sentences[{i}]"))
                except (ValueError, TypeError) as e:
                    # One bad sentence loses its own sample (other splits) or its own turn pair (train), no more.
                    sid = s.get("sent_id") if isinstance(s, dict) else None
                    key = make_key(item, "ref", ref.get("ref_id", "x"), "sent", sid if sid is not None else i)
                    if split != "train" and sid is not None:
                        key = make_key(sid)  # the key the sample would have had
                    yield rejected(self.name, split, "res", key, str(e))
            if good:  # a ref whose every sentence was rejected asks nothing (its rejects count it)
                entries.append((ref, ann, rle, good))
        if split == "train":
            yield from self._grouped(split, item, file_name, image, index, entries)
        else:
            yield from self._per_expression(split, item, file_name, image, index, entries)

    def _image_rejects(self, split: str, item: int, file_name: str, refs: list[dict], error: str) -> Iterator[Sample]:
        """The samples an unusable image loses: its one grouped sample (train) or every sentence of every ref."""
        what = f"{self.dataset} image {item} ({file_name})"
        if split == "train":
            ref_ids = [r.get("ref_id") for r in refs]
            yield rejected(self.name, split, "res", make_key(item), f"{what}: {error} (its sample of refs {ref_ids})")
            return
        for ref in refs:
            yield from self._rejects(split, item, ref, f"{what}: {error}")

    def _rejects(self, split: str, item: int, ref: Any, reason: str) -> Iterator[Sample]:
        """The samples a bad ref loses: its part of the image's group (train) or one per sentence (other splits)."""
        ref_id = ref.get("ref_id", "x") if isinstance(ref, dict) else "x"
        sentences = ref.get("sentences") if isinstance(ref, dict) else None
        if split == "train" or not isinstance(sentences, list):
            yield rejected(self.name, split, "res", make_key(item, "ref", ref_id), reason)
            return
        for i, s in enumerate(sentences):
            sid = s.get("sent_id") if isinstance(s, dict) else None
            key = make_key(sid) if sid is not None else make_key(item, "ref", ref_id, "sent", i)
            lost = f"ref_id {ref_id} sent_id {sid}" if sid is not None else f"ref_id {ref_id} sentences[{i}]"
            yield rejected(self.name, split, "res", key, f"{reason} (lost expression: {lost})")

    def _grouped(self, split, item, file_name, image, index, entries) -> Iterator[Sample]:
        """One sample per image with all its expressions (a crowded image is not split)."""
        if not entries:
            return
        objects: dict[int, ObjectTrack] = {}
        queries: list[tuple[str, int, dict]] = []
        for ref, ann, rle, sentences in entries:
            oid = len(objects) + 1
            objects[oid] = ObjectTrack(masks={0: rle}, category=index.cats.get(int(ann.get("category_id", -1))))
            for sent_id, text in sentences:
                info = {"ref_id": int(ref["ref_id"]), "ann_id": int(ref["ann_id"]), "sent_id": sent_id}
                queries.append((text, oid, info))
        key = make_key(item)
        yield Sample(
            key=key,
            source=self.name,
            split=split,
            task="res",
            media=image.media(file_name),
            objects=objects,
            turns=seg_turns([(text, oid) for text, oid, _ in queries], key),
            meta={
                "image_id": int(item),
                "file_name": file_name,
                "independent_turns": True,
                "expressions": [{**info, "object_id": oid, "text": text} for text, oid, info in queries],
            },
        )

    def _per_expression(self, split, item, file_name, image, index, entries) -> Iterator[Sample]:
        """One sample per sentence, with ids and the ground-truth box for RES / REC evaluation."""
        for ref, ann, rle, sentences in entries:
            category = index.cats.get(int(ann.get("category_id", -1)))
            box = xywh_to_xyxy(require(ann, "bbox", f"annotation {ann['id']}"), f"annotation {ann['id']}.bbox")
            for sent_id, text in sentences:
                key = make_key(sent_id)
                yield Sample(
                    key=key,
                    source=self.name,
                    split=split,
                    task="res",
                    media=image.media(file_name),
                    objects={1: ObjectTrack(masks={0: rle}, category=category)},
                    turns=seg_turns([(text, 1)], key),
                    meta={
                        "image_id": int(item),
                        "file_name": file_name,
                        "ref_id": int(ref["ref_id"]),
                        "ann_id": int(ref["ann_id"]),
                        "sent_id": sent_id,
                        "expression": text,
                        "category": category,
                        "box_xyxy": box,
                    },
                )
