"""VideoRefer-700K (short caption, detailed caption, QA, QA-memory) and VideoRefer-Bench (D, Q).

Raw layout of VideoRefer-700K (the release)::

    <root>/videorefer-short-caption-500k.json     [{"id", "video": <path under videos/>, "conversations": [
    <root>/videorefer-detailed-caption-125k.json     {"from": "human", "value": "<video>\\n... <region> ..."},
    <root>/videorefer-qa-75k.json                    {"from": "gpt", "value": ...}],
                                                     "annotation": [{<frame index>: {"segmentation": RLE}}  # per object
                                                     ], "ratio"?: float}]
    <root>/videos/<video>                          mp4 (or a folder of frames)

UniPixel-SFT-1M re-packs the JSONs without masks (``...-wo-masks.json``) and stores each entry's masks in
``<root>/masks_<kind>/<entry index>.json`` as [object][annotated frame, sorted][parts]; both are read. A cell's
parts (COCO RLEs or polygons, null = nothing) are OR-ed into the frame's mask, as the reference's `rle` mask type
does (§4.4). A frame folder (in place of an mp4) plays in frame-number order (``frame_2`` before ``frame_10``):
the annotation keys are frame indices in time.

VideoRefer-Bench (``<root>/VideoRefer-Bench-{D,Q}.json``, videos under ``<root>/videos`` or
``<root>/videos/Panda-70M-part``): Q entries have "Question", "options" ["(A) ...", ...], "Answer" "(B) ...",
"type", "frame_idx" (the key frame) and "annotation"; D entries have "caption", "frame_idx", "annotation".

Regions: ``<region>`` marks the i-th object of "annotation"; multi-object QA names objects
``<objectK><region>`` then ``<objectK>``. The tags pair with the annotations **in order of appearance** (the
j-th tag is the j-th annotation) whatever K says, as the reference readers do: the benchmark's first question
tags its single object ``<object3>``. Object K becomes id K (``[K]``) in every mention, as in the released
UniPixel data; bare ``<region>`` markers number the objects 0, 1, ... in order, except in the sources that name a
single object by a random id as the released data does (`single_object_ids`: detailed caption, QA and QA-memory),
where the one ``<region>`` becomes ``[k]`` with k in 0..SINGLE_OBJECT_IDS-1 fixed by the sample key. Region QA
(`videorefer_qa`) drops the multi-object questions' first line, "There are N objects in the video: <object0><region>,
...", as released: the memory prefix lists those objects.

Bad records are counted rejects (see `pixelqa.data.registry.rejected`), each naming the JSON file and the entry:
broken region markers (a count that disagrees with the annotations, a K tagged twice, a leftover marker, a region-QA
``<objectK>`` with no annotation), a key
frame where an object has no mask, an empty region, a polygon outside the image, a missing video or frame.
Only the reference recipe's filters (over 5 objects, ratio < 0.3, too few annotated frames) drop entries silently.

How each source talks (UniPixel's recipe): the short caption (stage 1) puts a visual prompt in place of
``<|ref|>`` (a mask prompt on the key frame here; point/box sampling happens when batches are built);
detailed caption and QA inject the objects' masks as memory (the user turn lists `memory_objects`); QA-memory
pre-fills the memory as the released data does: one round, the question plus ``"\nOptions:\n(X) <answer>"`` in a
pre-fill template, ``[k] <|ref|>`` -> ``[k] <|seg|>``; ``videorefer_qa_memory_two_round`` keeps our earlier form
(that pre-fill without the option line, then the question answered with the memory).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelqa.data import masks
from pixelqa.data.registry import RecordError, Source, register_source, rejected
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample, Turn, make_key
from pixelqa.data.sources._frame_order import frame_files
from pixelqa.data.sources._image_files import cached_json, check_polygons_inside
from pixelqa.data.sources._image_files import read_json as load_json
from pixelqa.data.sources.video_io import FrameSet, encode_video_frames, read_frame_files, uniform_indices, video_info
from pixelqa.data.sources.vos import pick
from pixelqa.prompt_format import PREFILL_TEMPLATES, REF, object_tag, prefill_answer

CONTEXT_FRAMES = 16  # frames spread over the video besides the annotated ones
MAX_OBJECTS = 5  # the paper puts mask losses on up to 5 objects; UniPixel drops entries with more
MIN_RATIO = 0.3  # UniPixel drops entries whose masks cover < 30% of the frames they should ("ratio")
# The forms of a memory pre-filling sample. "released" = UniPixel's `*_qa_mem` data: one round, the question plus
# its correct answer as the only option, `[k] <|ref|>` -> `[k] <|seg|>`. "two_round" = ours before: that pre-fill
# (without the option line) then the plain question answered with the memory. Each form is its own registered
# source (`<name>` / `<name>_two_round`), so shard folders and manifests, which are keyed by source name, never
# mix the two.
MEMORY_FORMS: tuple[str, ...] = ("released", "two_round")
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
# UniPixel's released detailed-caption, QA and QA-memory rows call a lone object [k] with k drawn from 0..15, so
# the model does not learn that a single object is always [0].
SINGLE_OBJECT_IDS = 16

_OBJ_REGION = re.compile(r"<object(\d+)><region>")
_OBJ = re.compile(r"<object(\d+)>")
_LETTER = re.compile(r"^\(([A-Z])\)\s*")


@dataclass
class Region:
    """One annotated object of a VideoRefer entry: per source-frame-index RLE (None = not visible)."""

    object_id: int
    masks: dict[int, Any]


@dataclass
class MaskParts:
    """The parts of one re-packed mask cell (COCO RLEs, polygons or null), OR-ed into one mask by `to_rle`: a list
    there means parts, not the polygon list of an inline "segmentation"."""

    parts: list


def strip_video_tag(text: str) -> str:
    """Drop the LLaVA-style <video> / <image> placeholder lines."""
    text = text.strip()
    for tag in ("<video>", "<image>"):
        if text.startswith(tag + "\n"):
            text = text[len(tag) + 1 :]
        if text.endswith("\n" + tag):
            text = text[: -len(tag) - 1]
    return text.replace("<video>", "").strip()


def region_ids(text: str, num_objects: int, where: str) -> list[int]:
    """Object id of each annotation, in annotation order: the j-th ``<objectK><region>`` tag names annotation j
    (id K, whatever annotation it pairs with); bare ``<region>`` markers give ids 0..n-1. RecordError on broken
    markers."""
    if _OBJ_REGION.search(text):
        ks = [int(k) for k in _OBJ_REGION.findall(text)]
        if len(ks) != num_objects:
            raise RecordError(
                f"{where}: {len(ks)} <objectK><region> tags {ks}, expected one per annotated object ({num_objects})"
            )
        if len(set(ks)) != len(ks):
            raise RecordError(f"{where}: <objectK><region> tags {ks} name an object twice, expected distinct K")
        return ks
    n = text.count("<region>")
    if n != num_objects:
        raise RecordError(f"{where}: {n} <region> markers, expected one per annotated object ({num_objects})")
    return list(range(num_objects))


def region_text(text: str, num_objects: int, with_ref: bool, where: str) -> str:
    """Replace region markers by object tags: ``<objectK><region>`` / ``<region>`` -> ``[id]`` (+ `` <|ref|>``),
    ids as `region_ids`; other ``<objectK>`` mentions -> ``[K]``."""
    ids = region_ids(text, num_objects, where)
    suffix = f" {REF}" if with_ref else ""
    if _OBJ_REGION.search(text):
        text = _OBJ_REGION.sub(lambda m: f"{object_tag(int(m.group(1)))}{suffix}", text)
        text = _OBJ.sub(lambda m: object_tag(int(m.group(1))), text)
    else:
        parts = text.split("<region>")
        text = parts[0] + "".join(f"{object_tag(ids[i])}{suffix}{p}" for i, p in enumerate(parts[1:]))
    if "<region>" in text or "<object" in text:
        raise RecordError(f"{where}: unmatched region markers left in {text!r:.120}")
    return text


def name_regions(regions: list[Region], text: str, where: str) -> list[Region]:
    """The regions with the object ids their tags in `text` give them (see `region_ids`)."""
    ids = region_ids(text, len(regions), where)
    return [Region(i, r.masks) for i, r in zip(ids, regions)]


def object_text(text: str) -> str:
    """Object names in an answer: ``<objectK>`` -> ``[K]``."""
    return _OBJ.sub(lambda m: object_tag(int(m.group(1))), text)


def parse_regions(annotation: Any, where: str, repacked: list | None = None) -> list[Region]:
    """Objects of an entry; with `repacked` (UniPixel's mask file) the RLEs come from there."""
    if not isinstance(annotation, list):
        raise TypeError(f"{where}.annotation: got {type(annotation).__name__}, expected a list (one dict per object)")
    if len(annotation) == 1 and isinstance(annotation[0], dict) and len(annotation[0]) == 1:
        ((frame, value),) = annotation[0].items()
        if isinstance(value, list):  # the ytb_vos entries of the QA file: {frame: [object, object, ...]}
            annotation = [{frame: v} for v in value]
    regions = []
    for k, obj in enumerate(annotation):
        if not isinstance(obj, dict) or not obj:
            raise ValueError(
                f"{where}.annotation[{k}]: got {obj!r:.80}, expected {{frame index: {{'segmentation': RLE}}}}"
            )
        frames = sorted(int(f) for f in obj)
        ms: dict[int, Any] = {}
        for pos, f in enumerate(frames):
            v = obj[str(f)] if str(f) in obj else obj[f]
            if isinstance(v, dict) and "segmentation" in v:
                ms[f] = v["segmentation"]
            elif repacked is not None:
                cell = repacked[k][pos] if k < len(repacked) and pos < len(repacked[k]) else None
                # every part of the cell counts: an object seen in pieces is stored as several RLEs
                ms[f] = MaskParts(cell) if isinstance(cell, list) else cell
            else:
                raise ValueError(f"{where}.annotation[{k}][{f}]: no 'segmentation' and no re-packed mask file")
        regions.append(Region(k + 1, ms))
    return regions


def to_rle(seg: Any, size: tuple[int, int], where: str) -> dict:
    """A VideoRefer segmentation (RLE dict, polygon list or re-packed `MaskParts`) as a canonical RLE of the frame
    size."""
    h, w = size
    if seg is None:
        return masks.empty(h, w)
    if isinstance(seg, MaskParts):
        rles = []
        for i, part in enumerate(seg.parts):
            if part is None:
                continue
            if isinstance(part, list) and part and not isinstance(part[0], list):
                part = [part]  # one flat polygon [x1, y1, ...] is a polygon list of one
            rles.append(to_rle(part, size, f"{where} part {i}"))
        return masks.merge(rles) if rles else masks.empty(h, w)
    if isinstance(seg, list):
        check_polygons_inside(seg, h, w, where)
        return masks.from_polygons(seg, h, w)
    if not isinstance(seg, dict):
        raise TypeError(f"{where}: got {type(seg).__name__}, expected an RLE dict or polygons")
    rle = masks.normalize(seg)
    if list(rle["size"]) != [h, w]:  # masks annotated at another resolution are resized, as the reference does
        rle = masks.resize_rle(rle, (h, w))
    return rle


def resolve_video(candidates: Sequence[Path]) -> Path:
    """The first existing video file / frame folder."""
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"video not found: tried {[str(c) for c in candidates]}")


def read_media(video: Path, needed: Sequence[int], context: int = CONTEXT_FRAMES) -> tuple[FrameSet, list[int]]:
    """Frames `needed` (source frame indices) plus `context` frames spread over the video, in time order."""
    if video.is_dir():
        files = frame_files(video)  # time order, hidden files (macOS `._*`) skipped
        total = len(files)
    else:
        total, _, _ = video_info(str(video))
    bad = [i for i in needed if not 0 <= i < max(total, 1)]
    if total < 1 or bad:
        raise ValueError(f"video {video}: has {total} frames, annotation needs frames {bad or list(needed)[:5]}")
    ids = sorted(set(needed) | set(uniform_indices(total, context) if context else ()))
    if video.is_dir():
        return read_frame_files([str(files[i]) for i in ids]), ids
    return encode_video_frames(str(video), ids), ids


def build_objects(
    regions: Sequence[Region], ids: list[int], size: tuple[int, int], where: str, only_frame: int | None = None
) -> dict[int, ObjectTrack]:
    """ObjectTracks keyed by object id, masks re-indexed to positions in `ids` (optionally one source frame only).

    RecordError when an object ends up with no visible mask (an empty region), or has none on `only_frame`."""
    pos = {f: t for t, f in enumerate(ids)}
    out = {}
    for j, r in enumerate(regions):
        ms = {f: to_rle(seg, size, f"{where}.annotation[{j}][frame {f}]") for f, seg in r.masks.items()}
        name = f"{where}.annotation[{j}] (object {object_tag(r.object_id)})"
        if not any(masks.area(m) > 0 for m in ms.values()):
            raise RecordError(f"{name}: empty region on every annotated frame {sorted(ms)}, expected a visible mask")
        if only_frame is not None:
            if only_frame not in ms or masks.area(ms[only_frame]) == 0:
                raise RecordError(
                    f"{name}: no mask on the key frame {only_frame}, expected one (annotated frames {sorted(ms)})"
                )
            ms = {only_frame: ms[only_frame]}
        out[r.object_id] = ObjectTrack(masks={pos[f]: m for f, m in ms.items()})
    return out


def annotated_positions(regions: list[Region], key: int, ids: list[int]) -> list[int]:
    """Positions among the sample's frames of the benchmark's annotated frames (any object's, the key frame too):
    the frames the official evaluation samples the LLM's frames from, in single-frame mode as well."""
    return sorted({ids.index(f) for r in regions for f in r.masks if f in ids} | {ids.index(key)})


def key_frame(track: ObjectTrack) -> int | None:
    """The first frame position where the object is visible."""
    for t in sorted(track.masks):
        if masks.area(track.masks[t]) > 0:
            return t
    return None


def mask_prompt(track: ObjectTrack, object_id: int, frame: int | None = None) -> Prompt:
    """A mask prompt of an object on `frame` (default: the first frame where it is visible)."""
    t = key_frame(track) if frame is None else frame
    if t is None or t not in track.masks:
        raise ValueError(f"object {object_id}: no visible mask to prompt with")
    return Prompt("mask", t, object_id, rle=track.masks[t])


def split_options(options: Sequence[str], where: str) -> tuple[list[str], list[str]]:
    """["(A) x", "(B) <object0>"] -> (["A", "B"], ["x", "[1]"])."""
    letters, texts = [], []
    for o in options:
        m = _LETTER.match(str(o).strip())
        if not m:
            raise ValueError(f"{where}.options: got {o!r}, expected options like '(A) text'")
        letters.append(m.group(1))
        texts.append(object_text(str(o).strip()[m.end() :].strip()))  # options may name <objectK> too
    return letters, texts


# ------------------------------------------------------------------------------------------- 700K

KINDS = {
    "short_caption": ("videorefer-short-caption-500k", "masks_short_caption"),
    "detailed_caption": ("videorefer-detailed-caption-125k", "masks_detailed_caption"),
    "qa": ("videorefer-qa-75k", "masks_qa"),
}


class VideoRefer700K(Source):
    """Shared reader of the VideoRefer-700K JSONs; subclasses set `kind` and implement `talk`."""

    splits = ("train",)
    kind = "qa"
    task = "region_qa"
    min_annotated_frames = 1
    single_object_ids = False  # True: a lone object under a bare <region> gets `single_object_id(key)`
    context_frames = CONTEXT_FRAMES  # frames stored besides the annotated ones (the collate samples among them all)

    def anno_path(self, root: Path) -> tuple[Path, Path | None]:
        """(entries JSON, re-packed mask folder or None)."""
        stem, mask_dir = KINDS[self.kind]
        for name, md in ((f"{stem}.json", None), (f"{stem}-wo-masks.json", root / mask_dir)):
            if (root / name).is_file():
                return root / name, md
        raise FileNotFoundError(
            f"videorefer {self.kind}: expected {root / (stem + '.json')} (or UniPixel's {stem}-wo-masks.json)"
        )

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The entries JSON."""
        self.check_split(split)
        return [self.anno_path(Path(root))[0]]

    def entries(self, root: Path) -> list:
        """The parsed entries list (cached per process)."""
        path = self.anno_path(Path(root))[0]
        data = cached_json(str(path))
        if not isinstance(data, list):
            raise TypeError(f"{path}: got {type(data).__name__}, expected a list of entries")
        return data

    def items(self, root: Path, split: str) -> Sequence[int]:
        """Entry indices."""
        self.check_split(split)
        return range(len(self.entries(root)))

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """The sample of entry `item` (none when UniPixel's filters drop it; a rejected sample when it is bad)."""
        root = Path(root)
        path, mask_dir = self.anno_path(root)
        e = self.entries(root)[int(item)]
        where = f"{path}[{item}]"
        key = make_key(self.kind, e.get("id", item) if isinstance(e, dict) else item)
        try:
            yield from self._convert(root, split, item, e, where, key, mask_dir)
        except (ValueError, TypeError, OSError) as err:
            yield rejected(self.name, split, self.task, key, str(err) if where in str(err) else f"{where}: {err}")

    def _convert(
        self, root: Path, split: str, item: int, e: Any, where: str, key: str, mask_dir: Path | None
    ) -> Iterator[Sample]:
        """`convert` of one parsed entry; raises on a bad entry."""
        for k in ("video", "conversations", "annotation"):
            if not isinstance(e, dict) or k not in e:
                raise ValueError(f"{where}: missing {k!r}, expected video, conversations and annotation")
        n_obj = len(e["annotation"]) if isinstance(e["annotation"], list) else -1
        if n_obj < 1 or n_obj > MAX_OBJECTS or float(e.get("ratio", 1.0)) < MIN_RATIO:
            return  # the reference recipe's filters
        conv = e["conversations"]
        if not isinstance(conv, list) or len(conv) < 2:
            raise ValueError(f"{where}.conversations: expected a human and a gpt turn, got {conv!r:.80}")
        question, response = strip_video_tag(str(conv[0]["value"])), str(conv[1]["value"]).strip()
        repacked = load_json(mask_dir / f"{item}.json") if mask_dir is not None else None
        parsed = parse_regions(e["annotation"], where, repacked)
        if self.single_object_ids:
            question = single_object_text(question, len(parsed), key)
        regions = name_regions(parsed, question, where)
        needed = sorted({f for r in regions for f in r.masks})
        if len(needed) < self.min_annotated_frames:
            return  # the reference recipe's filter (memory pre-filling needs >= 2 annotated frames)
        video = resolve_video([root / "videos" / e["video"], root / e["video"]])
        frames, ids = read_media(video, needed, self.context_frames)
        objects = build_objects(regions, ids, frames.size, where)
        prompts, turns, answer = self.talk(question, response, objects, key, where)
        yield Sample(
            key=key,
            source=self.name,
            split=split,
            task=self.task,
            media=Media("video", frames.frames, frames.size, frames.ext, frames.fps, ids),
            objects=objects,
            prompts=prompts,
            turns=turns,
            answer=answer,
            meta={"id": str(e.get("id", item)), "video": str(e["video"]), "annotated_frames": needed},
        )

    def talk(
        self, question: str, response: str, objects: dict[int, ObjectTrack], key: str, where: str
    ) -> tuple[list[Prompt], list[Turn], str]:
        """(prompts, turns, answer) of one entry."""
        raise NotImplementedError


@register_source("videorefer_short_caption")
class VideoReferShortCaption(VideoRefer700K):
    """Stage-1 region captions: one visual prompt (<|ref|>) and a short caption."""

    kind = "short_caption"
    task = "region_caption"

    def talk(
        self, question: str, response: str, objects: dict[int, ObjectTrack], key: str, where: str
    ) -> tuple[list[Prompt], list[Turn], str]:
        """The question with <|ref|> for the object; mask prompt on its first visible frame."""
        if len(objects) != 1:
            raise RecordError(f"{where}: {len(objects)} regions, expected one in a short-caption question")
        (oid,) = objects
        text = region_text(question, 1, with_ref=False, where=where).replace(object_tag(oid), REF, 1)
        return [mask_prompt(objects[oid], oid)], [Turn("user", text), Turn("assistant", response)], response


@register_source("videorefer_detailed_caption")
class VideoReferDetailedCaption(VideoRefer700K):
    """Stage-3 detailed region captions, the object given as memory."""

    kind = "detailed_caption"
    task = "region_caption"
    single_object_ids = True

    def talk(
        self, question: str, response: str, objects: dict[int, ObjectTrack], key: str, where: str
    ) -> tuple[list[Prompt], list[Turn], str]:
        """The question naming [k] (k random in 0..15 by the sample key); the object's masks are injected as memory."""
        text = region_text(question, len(objects), with_ref=False, where=where)
        return [], [Turn("user", text, memory_objects=sorted(objects)), Turn("assistant", response)], response


@register_source("videorefer_qa")
class VideoReferQA(VideoRefer700K):
    """Stage-3 region QA, the objects given as memory: the "There are N objects ..." line is dropped (the memory
    prefix lists the objects) and a lone object under a bare <region> is [k], k random in 0..15 by the sample key."""

    kind = "qa"
    task = "region_qa"
    single_object_ids = True

    def talk(
        self, question: str, response: str, objects: dict[int, ObjectTrack], key: str, where: str
    ) -> tuple[list[Prompt], list[Turn], str]:
        """The question (without its object-list line) naming [k]; answer with objects renamed the same way."""
        body = drop_object_list(question, len(objects))
        if body is None:
            text = region_text(question, len(objects), with_ref=False, where=where)
        else:
            text = mentions_only(body, objects, where)
        answer = mentions_only(response, objects, f"{where} (answer)")
        return [], [Turn("user", text, memory_objects=sorted(objects)), Turn("assistant", answer)], answer


def drop_object_list(question: str, num_objects: int) -> str | None:
    """The question after its object-list line ("There are 2 objects in the video: <object0><region>, ..."), or
    None when it has none. As released, the list is the first line, starts with "There" and holds every
    ``<objectK><region>`` tag; it is dropped because the memory prefix lists the same objects (kept, it would sit
    under that prefix saying it twice)."""
    intro, _, body = question.partition("\n")
    if not body.strip() or not intro.lstrip().startswith("There") or len(_OBJ_REGION.findall(intro)) != num_objects:
        return None
    return body.strip()


def mentions_only(text: str, objects: dict[int, ObjectTrack], where: str) -> str:
    """``<objectK>`` -> ``[K]`` in a text that must not tag regions; RecordError when it names an object that is not
    annotated, or keeps a region marker."""
    named = sorted({int(k) for k in _OBJ.findall(text)} - set(objects))
    if named:
        raise RecordError(f"{where}: names objects {named}, expected only the annotated {sorted(objects)}")
    out = object_text(text)
    if "<region>" in out or "<object" in out:
        raise RecordError(f"{where}: unmatched region markers left in {text!r:.120}")
    return out


@register_source("videorefer_qa_memory")
class VideoReferQAMemory(VideoRefer700K):
    """Stage-3 memory pre-filling (`form`, see MEMORY_FORMS): segment the prompted objects of a QA entry."""

    kind = "qa"
    task = "memory_qa"
    min_annotated_frames = 2  # as UniPixel: single-frame entries teach nothing about tracking
    form = "released"
    single_object_ids = True
    # as released, the frames are sampled among the annotated ones only: every frame supervises the pre-fill masks
    context_frames = 0

    def talk(
        self, question: str, response: str, objects: dict[int, ObjectTrack], key: str, where: str
    ) -> tuple[list[Prompt], list[Turn], str]:
        """Released: one pre-fill round over question + correct option; two_round: then the answer with memory."""
        if check_form(self.form, self.name) == "two_round":
            return memory_turns(question, object_text(response), objects, key, where)
        with_ref = region_text(question, len(objects), with_ref=True, where=where) + option_line(
            object_text(response), key
        )
        return prefill_turns(with_ref, objects, key, where)


@register_source("videorefer_qa_memory_two_round")
class VideoReferQAMemoryTwoRound(VideoReferQAMemory):
    """`videorefer_qa_memory` in our two-round form (pre-fill, then the question answered with memory), with the
    context frames of the region sources (the answer turn may ask about the whole video)."""

    form = "two_round"
    context_frames = CONTEXT_FRAMES


def single_object_id(key: str) -> int:
    """The released data's random id of a lone object, in 0..SINGLE_OBJECT_IDS-1, fixed by the sample key (salted,
    so it does not follow the template or option-letter choices)."""
    return zlib.crc32((key + "/object_id").encode("utf-8")) % SINGLE_OBJECT_IDS


def single_object_text(question: str, num_objects: int, key: str) -> str:
    """A single-object question with a bare ``<region>`` tagged ``<objectK><region>``, K = `single_object_id(key)`,
    so that every later step names the object [K]; other questions (several objects, or ``<objectK>`` tags, whose
    K the released data keeps) unchanged."""
    if num_objects != 1 or _OBJ.search(question):
        return question
    return question.replace("<region>", f"<object{single_object_id(key)}><region>")


def check_form(form: str, source: str) -> str:
    """`form` if it is one of MEMORY_FORMS, else ValueError naming the source."""
    if form not in MEMORY_FORMS:
        raise ValueError(f"{source}.form: got {form!r}, expected one of {list(MEMORY_FORMS)}")
    return form


def option_line(answer: str, key: str) -> str:
    """``"\nOptions:\n(X) answer"``: the correct answer as the only option, X in A-D chosen by the sample key
    (salted, so the letter does not follow the template choice)."""
    return f"\nOptions:\n({pick(OPTION_LETTERS, key + '/option')}) {answer}"


def ref_order(text: str) -> list[int]:
    """The ids of the `[k] <|ref|>` marks of a text, in textual order."""
    return [int(m) for m in re.findall(r"\[(\d+)\] " + re.escape(REF), text)]


def prefill_turns(
    with_ref: str, objects: dict[int, ObjectTrack], key: str, where: str
) -> tuple[list[Prompt], list[Turn], str]:
    """The released one-round pre-fill sample of a text holding `[k] <|ref|>`: prompts and `[k] <|seg|>` both in
    the textual order of the `<|ref|>`s."""
    order = ref_order(with_ref)
    if sorted(order) != sorted(objects):
        raise RecordError(f"{where}: <|ref|> objects {order}, expected each of {sorted(objects)} once")
    answer = prefill_answer(order)
    turns = [Turn("user", localize(with_ref, key)), Turn("assistant", answer, seg_objects=order)]
    return [mask_prompt(objects[k], k) for k in order], turns, answer


def localize(question: str, key: str) -> str:
    """The pre-fill request: the question (with its `[k] <|ref|>`) in one of the released pre-fill templates."""
    return pick(PREFILL_TEMPLATES, key).format(question)


def memory_turns(
    question: str, answer: str, objects: dict[int, ObjectTrack], key: str, where: str, prompt_frame: int | None = None
) -> tuple[list[Prompt], list[Turn], str]:
    """The two-round memory conversation for a region question (VideoRefer markers)."""
    ids = sorted(objects)
    with_ref = region_text(question, len(objects), with_ref=True, where=where)
    plain = region_text(question, len(objects), with_ref=False, where=where)
    order = ref_order(with_ref)
    prompts = [mask_prompt(objects[k], k, prompt_frame) for k in order]
    turns = [
        Turn("user", localize(with_ref, key)),
        Turn("assistant", prefill_answer(ids), seg_objects=ids),
        Turn("user", plain, memory_objects=ids),
        Turn("assistant", answer),
    ]
    return prompts, turns, answer


# ------------------------------------------------------------------------------------------- Bench


class VideoReferBench(Source):
    """Shared reader of VideoRefer-Bench-D / -Q; splits choose the mask protocol.

    single_frame: each object keeps only its mask on the key frame ("frame_idx"); multi_frame: all masks.
    """

    splits = ("single_frame", "multi_frame")
    file = "VideoRefer-Bench-Q.json"

    def path(self, root: Path) -> Path:
        """The benchmark JSON."""
        p = Path(root) / self.file
        if not p.is_file():
            raise FileNotFoundError(f"{self.name}: expected {p}")
        return p

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The benchmark JSON."""
        self.check_split(split)
        return [self.path(root)]

    def items(self, root: Path, split: str) -> Sequence[int]:
        """Entry indices."""
        self.check_split(split)
        data = cached_json(str(self.path(root)))
        if not isinstance(data, list):
            raise TypeError(f"{self.path(root)}: got {type(data).__name__}, expected a list of entries")
        return range(len(data))

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """The sample of entry `item`, or a rejected sample naming the file and the entry when it is bad."""
        self.check_split(split)
        e = cached_json(str(self.path(root)))[int(item)]
        video = str(e.get("video", "")) if isinstance(e, dict) else ""
        key = self.key(item, video)
        try:
            yield self.sample(Path(root), split, item)
        except (ValueError, TypeError, OSError) as err:
            where = f"{self.path(root)}[{item}]"
            yield rejected(self.name, split, self.task, key, str(err) if where in str(err) else f"{where}: {err}")

    def key(self, item: int, video: str) -> str:
        """The sample key of entry `item`."""
        raise NotImplementedError

    def sample(self, root: Path, split: str, item: int) -> Sample:
        """The sample of entry `item`; raises on a bad entry."""
        raise NotImplementedError

    def question_text(self, e: dict) -> str:
        """The text whose region tags name the annotations (default: none, bare <region> numbering)."""
        return str(e.get("Question", "")).strip()

    def load(self, root: Path, item: int) -> tuple[dict, str, list[Region], int, FrameSet, list[int]]:
        """(entry, where, regions, key frame, frames, source frame ids) of one entry."""
        root = Path(root)
        e = cached_json(str(self.path(root)))[int(item)]
        where = f"{self.path(root)}[{item}]"
        for k in ("video", "annotation", "frame_idx"):
            if not isinstance(e, dict) or k not in e:
                raise ValueError(f"{where}: missing {k!r}")
        regions = name_regions(parse_regions(e["annotation"], where), self.question_text(e), where)
        kf = int(e["frame_idx"])
        needed = sorted({f for r in regions for f in r.masks} | {kf})
        video = resolve_video(
            [root / "videos" / e["video"], root / "videos" / "Panda-70M-part" / e["video"], root / e["video"]]
        )
        frames, ids = read_media(video, needed)
        return e, where, regions, kf, frames, ids


@register_source("videorefer_bench_q")
class VideoReferBenchQ(VideoReferBench):
    """VideoRefer-Bench-Q: multiple-choice questions about masked objects (memory injection)."""

    file = "VideoRefer-Bench-Q.json"
    task = "mcq"

    def key(self, item: int, video: str) -> str:
        """q-<index>-<video stem>."""
        return make_key("q", item, os.path.splitext(video)[0])

    def sample(self, root: Path, split: str, item: int) -> Sample:
        """One MCQ sample."""
        e, where, regions, kf, frames, ids = self.load(root, item)
        only = kf if split == "single_frame" else None
        objects = build_objects(regions, ids, frames.size, where, only_frame=only)
        letters, texts = split_options(e.get("options", []), where)
        correct = _LETTER.match(str(e.get("Answer", "")).strip())
        if not correct or correct.group(1) not in letters:
            raise ValueError(f"{where}.Answer: got {e.get('Answer')!r}, expected one of the options' letters {letters}")
        question = region_text(str(e.get("Question", "")).strip(), len(regions), with_ref=False, where=where)
        text = mcq_text(question, letters, texts)
        key = self.key(item, str(e["video"]))
        return Sample(
            key=key,
            source=self.name,
            split=split,
            task=self.task,
            media=Media("video", frames.frames, frames.size, frames.ext, frames.fps, ids),
            objects=objects,
            turns=[Turn("user", text, memory_objects=sorted(objects)), Turn("assistant", correct.group(1))],
            answer=correct.group(1),
            choices=texts,
            meta={
                "question_type": e.get("type"),
                "key_frame": ids.index(kf),
                "annotated_frames": annotated_positions(regions, kf, ids),
                "video": str(e["video"]),
                "answer_text": str(e.get("Answer")),
                "index": int(item),
            },
        )


def mcq_text(question: str, letters: Sequence[str], texts: Sequence[str]) -> str:
    """Question + lettered options + the answer-format instruction."""
    opts = "\n".join(f"({x}) {t}" for x, t in zip(letters, texts))
    return f"{question}\nOptions:\n{opts}\nAnswer with the option's letter."


@register_source("videorefer_bench_d")
class VideoReferBenchD(VideoReferBench):
    """VideoRefer-Bench-D: detailed description of one masked object (scored by a GPT judge)."""

    file = "VideoRefer-Bench-D.json"
    task = "region_caption"

    def key(self, item: int, video: str) -> str:
        """d-<index>-<video stem>."""
        return make_key("d", item, os.path.splitext(video)[0])

    def question_text(self, e: dict) -> str:
        """Bench-D entries hold one object and no question: bare numbering."""
        return "<region>" * len(e.get("annotation") or [])

    def sample(self, root: Path, split: str, item: int) -> Sample:
        """One description sample."""
        e, where, regions, kf, frames, ids = self.load(root, item)
        objects = build_objects(regions, ids, frames.size, where, only_frame=kf if split == "single_frame" else None)
        caption = str(e.get("caption", "")).strip()
        if len(objects) != 1:
            raise RecordError(f"{where}: {len(objects)} annotated objects, expected one to describe")
        # the object's own id, as the memory text names it (the official request says [0])
        (oid,) = objects
        ask = f"Please give a detailed description of the highlighted object {object_tag(oid)} in the video."
        key = self.key(item, str(e["video"]))
        return Sample(
            key=key,
            source=self.name,
            split=split,
            task=self.task,
            media=Media("video", frames.frames, frames.size, frames.ext, frames.fps, ids),
            objects=objects,
            turns=[Turn("user", ask, memory_objects=sorted(objects)), Turn("assistant", caption)],
            answer=caption,
            meta={
                "key_frame": ids.index(kf),
                "annotated_frames": annotated_positions(regions, kf, ids),
                "video": str(e["video"]),
                "index": int(item),
            },
        )
