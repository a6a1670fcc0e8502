"""ReasonSeg (LISA): reasoning segmentation on images, LabelMe-style polygon JSON next to each image.

Raw layout (as released by LISA; UniPixel-SFT-1M ships it as `lisa/reason_seg/ReasonSeg/`)::

    <root>/{train,val,test}/<name>.jpg
    <root>/{train,val,test}/<name>.json     {"text": [query, ...], "is_sentence": bool,
                                             "shapes": [{"label": "target"|"ignore"|"flag",
                                                         "shape_type": "polygon", "points": [[x, y], ...]}]}
    <root>/explanatory/train.json           [{"image": "<name>.jpg", "query": str, "outputs": str}, ...]

The mask follows LISA's rule: polygons ('flag' shapes skipped) are painted largest first with their outline
(`np.argsort(area)[::-1]`, so of two equal areas the earlier polygon wins), 'target' as foreground and 'ignore' as
a don't-care region, so a smaller polygon drawn later wins where they overlap. One sample per query (plus one
explanatory sample per train image that has one); the ignore region goes to `meta["ignore_rle"]`. The official
UniPixel run scores it as background (it paints -1 into a uint8 canvas, which cv2 saturates to 0); the protocol
switch `reasonseg+exclude_ignore` (`pixelqa.eval.official`) leaves it out of I and U, as LISA does.

Images are `<name>.jpg` (or `.jpeg`, any case). What yields no sample is counted, never dropped silently: an
annotation without its image, or (train only) a polygon wholly off the image, is a reject; a train image without a
target region, or a query-less annotation, is skipped. val / test keep every image the official evaluation scores.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected, skipped
from pixelqa.data.schema import ObjectTrack, Sample, Turn, make_key
from pixelqa.data.sources._image_files import (
    cached_json,
    check_polygons_inside,
    first_existing,
    read_image,
    read_json,
    require,
)
from pixelqa.data.sources._instructions import explain_query, phrase_query, seg_answer, sentence_query

_TARGET, _IGNORE = 1, 255
IMAGE_SUFFIXES = (".jpg", ".jpeg")  # matched whatever their case ("x.JPG"); the release's images are all .jpg


def polygon_masks(
    shapes: Any, height: int, width: int, where: str, inside: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """LISA's painting of ReasonSeg shapes -> (target, ignore) bool masks of (height, width); `inside`: a polygon
    wholly off the image is damage (ValueError), else it paints nothing, as LISA's and UniPixel's code have it."""
    if not isinstance(shapes, list):
        raise TypeError(f"{where}.shapes: got {type(shapes).__name__}, expected a list of polygon shapes")
    polys: list[tuple[int, int, np.ndarray]] = []  # (area, value, (N, 1, 2) int32 points)
    for i, shape in enumerate(shapes):
        label = str(require(shape, "label", f"{where}.shapes[{i}]")).lower()
        if label == "flag":
            continue
        if "ignore" in label:
            value = _IGNORE
        elif "target" in label:
            value = _TARGET
        else:
            raise ValueError(f"{where}.shapes[{i}].label: got {label!r}, expected 'target', 'ignore' or 'flag'")
        pts = np.asarray(require(shape, "points", f"{where}.shapes[{i}]"), dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 1:
            raise ValueError(f"{where}.shapes[{i}].points: got shape {pts.shape}, expected a list of [x, y]")
        # a polygon wholly off the image paints nothing: damage, as for the COCO sources (a partial one is clipped)
        if inside:
            check_polygons_inside([pts.reshape(-1).tolist()], height, width, f"{where}.shapes[{i}].points")
        pts = pts.astype(np.int32).reshape(-1, 1, 2)  # LISA truncates coordinates to integers
        tmp = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(tmp, [pts], True, 1, 1)
        cv2.fillPoly(tmp, [pts], 1)
        polys.append((int(tmp.sum()), value, pts))
    canvas = np.zeros((height, width), dtype=np.uint8)
    # largest first, so small regions stay visible; LISA's exact expression decides ties: np.argsort keeps equal
    # areas in file order (for the few shapes of an image), reversed, so the earlier polygon is painted last and
    # wins, where a stable descending sort would let the later one win
    for i in np.argsort([area for area, _, _ in polys])[::-1]:
        _, value, pts = polys[int(i)]
        cv2.polylines(canvas, [pts], True, value, 1)
        cv2.fillPoly(canvas, [pts], value)
    return canvas == _TARGET, canvas == _IGNORE


@register_source("reasonseg")
class ReasonSeg(Source):
    """ReasonSeg train / val / test; see the module docstring."""

    splits = ("train", "val", "test")

    def split_dir(self, root: Path, split: str) -> Path:
        """<root>/<split>, the folder of images and their JSON files."""
        self.check_split(split)
        return first_existing([Path(root) / split], f"ReasonSeg {split} folder")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """Every per-image JSON of the split (small), plus the explanatory file for train."""
        files = sorted(self.split_dir(root, split).glob("*.json"))
        exp = Path(root) / "explanatory" / "train.json"
        return files + ([exp] if split == "train" and exp.is_file() else [])

    def items(self, root: Path, split: str) -> list[str]:
        """Names (without extension) of the split's images and annotations, sorted: an annotation without its image,
        or an image without its annotation, is an item too, so `convert` counts it as damage."""
        files = [p for p in self.split_dir(root, split).iterdir() if not p.name.startswith(".")]
        return sorted({p.stem for p in files if p.suffix.lower() in (*IMAGE_SUFFIXES, ".json")})

    def image_path(self, folder: Path, item: str) -> Path | None:
        """The image of `item` in `folder` (<item>.jpg, else any case of .jpg / .jpeg); None when there is none."""
        path = folder / f"{item}.jpg"
        if path.is_file():
            return path
        found = [p for p in folder.glob(f"{glob.escape(item)}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
        return sorted(found)[0] if found else None

    def _explanations(self, root: Path) -> dict[str, dict]:
        """image name (no extension) -> explanatory record; empty when the file is absent."""
        path = Path(root) / "explanatory" / "train.json"
        if not path.is_file():
            return {}
        data = cached_json(str(path))
        if not isinstance(data, list):
            raise TypeError(f"{path}: got {type(data).__name__}, expected a list of records")
        out = {}
        for i, rec in enumerate(data):
            out[Path(str(require(rec, "image", f"{path}[{i}]"))).stem] = rec
        return out

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """One sample per query of one image (train: empty targets skipped; plus the explanatory one)."""
        d = self.split_dir(root, split)
        json_path = d / f"{item}.json"
        image_path = self.image_path(d, item)
        if not json_path.is_file():
            raise FileNotFoundError(f"ReasonSeg annotation not found: {json_path} (next to {image_path})")
        if image_path is None:
            reason = f"{json_path}: image referenced but missing, expected {d / item}.jpg"
            yield rejected(self.name, split, "reasonseg", make_key(item, 0), reason)
            return
        ann = read_json(json_path)
        where = str(json_path)
        texts = require(ann, "text", where)
        texts = [texts] if isinstance(texts, str) else list(texts)
        is_sentence = bool(require(ann, "is_sentence", where))
        image = read_image(image_path)
        h, w = image.size
        # training drops an image with an off-image polygon as damage; the benchmark splits keep every image the
        # official evaluation scores (the polygon paints nothing there either)
        target, ignore = polygon_masks(require(ann, "shapes", where), h, w, where, inside=split == "train")
        if split == "train" and not target.any():  # LISA's training filter: nothing to segment
            reason = f"{where}: no 'target' region (ignore or flag shapes only), which the train split leaves out"
            yield skipped(self.name, split, "reasonseg", make_key(item, 0), reason)
            return
        if not texts and (split != "train" or item not in self._explanations(root)):
            yield skipped(self.name, split, "reasonseg", make_key(item, 0), f"{where}.text: got [], no query to ask")
            return
        rle = masks.encode(target)
        base_meta: dict[str, Any] = {"image": item, "is_sentence": is_sentence}
        if ignore.any():
            base_meta["ignore_rle"] = masks.encode(ignore)
        objects = {1: ObjectTrack(masks={0: rle})}
        for qi, text in enumerate(texts):
            key = make_key(item, qi)
            ask = sentence_query(text, key) if is_sentence else phrase_query(text, key)
            yield Sample(
                key=key,
                source=self.name,
                split=split,
                task="reasonseg",
                media=image.media(item),
                objects=objects,
                turns=[Turn("user", ask), Turn("assistant", seg_answer(key), seg_objects=[1])],
                meta={**base_meta, "query_index": qi, "query": text, "explanatory": False},
            )
        if split == "train":
            rec = self._explanations(root).get(item)
            if rec is not None:
                key = make_key(item, "exp")
                query = str(require(rec, "query", f"explanatory record of {item}"))
                outputs = str(require(rec, "outputs", f"explanatory record of {item}"))
                answer = f"{seg_answer(key)} {' '.join(outputs.split())}"
                yield Sample(
                    key=key,
                    source=self.name,
                    split=split,
                    task="reasonseg",
                    media=image.media(item),
                    objects=objects,
                    turns=[Turn("user", explain_query(query, key)), Turn("assistant", answer, seg_objects=[1])],
                    meta={**base_meta, "query": query, "explanatory": True},
                )
