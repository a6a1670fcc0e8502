"""Osprey-724K: region-level conversations, detailed region descriptions and positive/negative region QA.

Raw layout (the Osprey-724K release; UniPixel-SFT-1M ships it as `osprey/Osprey-724K/` + `osprey/coco/`)::

    <root>/Osprey-724K/osprey_conversation.json              (or directly in <root>)
    <root>/Osprey-724K/osprey_detail_description.json
    <root>/Osprey-724K/osprey_lvis_positive_negative.json
    <root>/Osprey-724K/osprey_short_form.json, osprey_part_level.json
    COCO images under <root>/coco/{train2014,train2017,val2017,imgs}/ (or <root>/{imgs,train2014,...}/);
    a file_name like "COCO_train2014_000000000009.jpg" is also tried as "000000000009.jpg", as Osprey does.

Each record: {"id", "file_name", "height", "width", "annotation": [{"segmentation": COCO polygons/RLE,
"bbox", ...}], "conversations": [{"from": "human"|"gpt", "value": "... <region1> ..."}]} or, for detailed
descriptions, "description": ["<region1>: text", ...]. Region k is annotation k-1.

The regions are given to the model as masks through the object memory, as UniPixel does for its region
data: every region the text mentions becomes object k, listed in the first user turn's `memory_objects`
(collate renders "[k]: <|mem|>" for it), and "<regionk>" in the text becomes the tag "[k]". Records whose
markers are broken or point past the annotation list (a known defect of a small part of the release), that
mention no region, whose region is empty or outside the image, or whose height/width disagree with the image
become counted rejects (see `pixelqa.data.registry.rejected`) naming the file and the record; missing fields
raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected
from pixelqa.data.schema import ObjectTrack, Sample, Turn, make_key
from pixelqa.data.sources._image_files import (
    cached_json_list,
    check_size,
    first_existing,
    read_image,
    require,
    segmentation_rle,
)
from pixelqa.data.sources._instructions import describe_region
from pixelqa.prompt_format import object_tag

# "<region3>" and the release's typos of it: "<region3]", "<region 3>", "<region of3>", "<Region3>", "<regin3>"
_MARKER = re.compile(r"<\s*(?:region|regin)\s*(?:of\s*)?(\d+)\s*[>\].]", re.IGNORECASE)
_LEFTOVER = re.compile(r"<\s*(?:region|regin)", re.IGNORECASE)
_IMAGE_DIRS = (
    "coco/train2014",
    "coco/train2017",
    "coco/val2017",
    "coco/imgs",
    "imgs",
    "train2014",
    "train2017",
    "val2017",
    "images",
)


class InvalidRecord(Exception):
    """A record with broken region markers (a counted reject of that record)."""


def replace_markers(text: str, num_regions: int, where: str) -> tuple[str, list[int]]:
    """Replace every region marker by its object tag "[k]"; returns the text and the region ids in order."""
    found: list[int] = []

    def sub(m: re.Match) -> str:
        k = int(m.group(1))
        if not 1 <= k <= num_regions:
            raise InvalidRecord(f"{where}: region {k} but only {num_regions} annotations")
        found.append(k)
        return object_tag(k)

    out = _MARKER.sub(sub, text)
    if _LEFTOVER.search(out):
        raise InvalidRecord(f"{where}: unreadable region marker in {text!r:.80}")
    return out, found


def strip_image_token(text: str) -> str:
    """The text without LLaVA's <image> placeholder."""
    return text.replace("<image>", "").strip()


class OspreySource(Source):
    """Base converter for one Osprey-724K file; subclasses set `file_name` and `task`."""

    file_name: str = ""
    task: str = "region_qa"
    splits = ("train",)

    def annotation_file(self, root: Path) -> Path:
        """The JSON file, in <root>/Osprey-724K/ or <root>/."""
        root = Path(root)
        return first_existing(
            [root / "Osprey-724K" / self.file_name, root / self.file_name], f"Osprey {self.file_name}"
        )

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The JSON file."""
        return [self.annotation_file(root)]

    def _records(self, root: Path, split: str) -> list:
        self.check_split(split)
        return cached_json_list(self.annotation_file(root))

    def items(self, root: Path, split: str) -> list[int]:
        """Record indices."""
        return list(range(len(self._records(root, split))))

    def image_path(self, root: Path, file_name: str) -> Path:
        """The record's image: file_name, or its part after the last '_', in the known image folders."""
        root = Path(root)
        names = [file_name, file_name.split("_")[-1]]
        return first_existing([root / d / n for d in _IMAGE_DIRS for n in names], f"Osprey image {file_name}")

    def turns(self, rec: dict, num_regions: int, where: str, key: str) -> tuple[list[Turn], list[int]]:
        """The record's turns (with [k] tags) and the region ids they mention."""
        raise NotImplementedError

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """One sample per record; a record with broken markers or a bad region yields a rejected sample."""
        rec = self._records(root, split)[int(item)]
        where = f"{self.annotation_file(root)}[{item}]"
        regions = require(rec, "annotation", where)
        key = make_key(item)
        try:
            turns, mentioned = self.turns(rec, len(regions), where, key)
        except InvalidRecord as e:
            yield rejected(self.name, split, self.task, key, f"broken region marker: {e}")
            return
        if not mentioned:
            yield rejected(self.name, split, self.task, key, f"{where}: mentions no region, expected <regionK> markers")
            return
        file_name = str(require(rec, "file_name", where))
        image = read_image(self.image_path(Path(root), file_name))
        try:
            check_size(image.size, rec.get("height"), rec.get("width"), where)
        except ValueError as e:  # the record's height/width disagree with its image: its regions may be misplaced
            yield rejected(self.name, split, self.task, key, f"{e} ({file_name})")
            return
        h, w = image.size
        objects: dict[int, ObjectTrack] = {}
        for k in sorted(set(mentioned)):
            seg = require(regions[k - 1], "segmentation", f"{where}.annotation[{k - 1}]")
            try:
                rle = segmentation_rle(seg, h, w, f"{where}.annotation[{k - 1}].segmentation")
            except ValueError as e:  # a polygon outside the image, an RLE of another size
                yield rejected(self.name, split, self.task, key, str(e))
                return
            if masks.area(rle) == 0:
                reason = f"{where}.annotation[{k - 1}] (<region{k}>): empty region, expected a visible mask"
                yield rejected(self.name, split, self.task, key, reason)
                return
            objects[k] = ObjectTrack(masks={0: rle})
        turns[0].memory_objects = sorted(objects)
        yield Sample(
            key=key,
            source=self.name,
            split=split,
            task=self.task,
            media=image.media(file_name),
            objects=objects,
            turns=turns,
            meta={"id": rec.get("id"), "file_name": file_name},
        )


class OspreyConversationBase(OspreySource):
    """Records with "conversations" (human/gpt turns holding region markers)."""

    def turns(self, rec: dict, num_regions: int, where: str, key: str) -> tuple[list[Turn], list[int]]:
        """human -> user, gpt -> assistant; a trailing unanswered question is dropped."""
        convs = require(rec, "conversations", where)
        if not isinstance(convs, list):
            raise TypeError(f"{where}.conversations: got {type(convs).__name__}, expected a list of turns")
        convs = convs[: len(convs) // 2 * 2]
        if not convs:
            raise InvalidRecord(f"{where}: no question-answer pair")
        turns, mentioned = [], []
        for i, c in enumerate(convs):
            frm = require(c, "from", f"{where}.conversations[{i}]")
            expected = "human" if i % 2 == 0 else "gpt"
            if frm != expected:
                raise ValueError(f"{where}.conversations[{i}].from: got {frm!r}, expected {expected!r} (alternating)")
            text, ids = replace_markers(str(require(c, "value", f"{where}.conversations[{i}]")), num_regions, where)
            mentioned += ids
            turns.append(Turn("user" if i % 2 == 0 else "assistant", strip_image_token(text)))
        return turns, mentioned


@register_source("osprey_conversation")
class OspreyConversation(OspreyConversationBase):
    """Osprey-724K region-based conversations (GPT-4 generated, COCO images)."""

    file_name = "osprey_conversation.json"


@register_source("osprey_pos_neg")
class OspreyPosNeg(OspreyConversationBase):
    """Osprey-724K positive/negative region questions on LVIS categories ("Is [1] a ...?")."""

    file_name = "osprey_lvis_positive_negative.json"


@register_source("osprey_short_form")
class OspreyShortForm(OspreyConversationBase):
    """Osprey-724K short-form region QA (not in UniPixel's mixture; available for ablations)."""

    file_name = "osprey_short_form.json"


@register_source("osprey_part_level")
class OspreyPartLevel(OspreyConversationBase):
    """Osprey-724K part-level region QA (not in UniPixel's mixture; available for ablations)."""

    file_name = "osprey_part_level.json"


@register_source("osprey_detail_description")
class OspreyDetailDescription(OspreySource):
    """Osprey-724K detailed region descriptions: one request/description pair per region."""

    file_name = "osprey_detail_description.json"
    task = "region_caption"

    def turns(self, rec: dict, num_regions: int, where: str, key: str) -> tuple[list[Turn], list[int]]:
        """Each "<regionk>: text" becomes a request to describe [k] and the text as the answer."""
        descs: Any = require(rec, "description", where)
        if not isinstance(descs, list):
            raise TypeError(f"{where}.description: got {type(descs).__name__}, expected a list of strings")
        turns, mentioned = [], []
        for i, d in enumerate(descs):
            text, ids = replace_markers(str(d).strip(), num_regions, f"{where}.description[{i}]")
            tag = object_tag(ids[0]) if len(ids) == 1 else None
            if tag is None or not text.startswith(tag):
                raise InvalidRecord(f"{where}.description[{i}]: expected one leading region marker in {d!r:.60}")
            body = text[len(tag) :].lstrip(" :").strip()
            if not body:
                raise InvalidRecord(f"{where}.description[{i}]: empty description")
            turns += [Turn("user", describe_region(tag, key, i)), Turn("assistant", body)]
            mentioned += ids
        return turns, mentioned
