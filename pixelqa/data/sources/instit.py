"""Inst-IT (Peng et al., 2024): instance-centric image captions and video QA, with instance masks.

Raw layout (Inst-IT-Dataset with the instance masks, the files UniPixel-SFT-1M uses)::

    <root>/inst_it_dataset_image_51k_w_mask.json   [{"image_id", "image_path": "<any>/<rest>",
                                                     "instance_level_caption": {oid: {"short", "long"}},
                                                     "segmentations": {oid: {"mask": RLE}}}]
    <root>/images_raw/<rest>                       the images without drawn visual prompts
    <root>/inst_it_dataset_video_21k_w_mask.json   [{"video_id", "video_path": "<any>/<rest>",
                                                     "question_answer_pairs": [{"question", "answer"}],
                                                     "segmentations": {<frame file name>: {oid: {"mask": RLE}}}}]
    <root>/videos_raw/<rest>/<frames>.{jpg,png}    frames numbered in their file names

Questions name instances ``[k]`` and frames ``<t>`` (1-based). Known annotation slips are repaired as in
the reference loader ("[0k]" -> "[k]", "<0>" -> "<1>"). Videos keep all their frames (the questions' <t> tags
count them): meta "keep_all_frames".

Nothing leaves silently (`pixelqa.data.registry`): a QA pair that names no instance, and an image instance with no
short caption, hold nothing to ask and are counted as skipped (not damage; the release leaves the QA pairs out
too); a QA pair naming "[0]" after the repairs or an instance with no mask on any frame, and a captioned image
instance with an empty mask, are counted rejects naming the file and the record. A video whose "segmentations"
name a frame file the folder lacks rejects each of its QA pairs, naming the missing files: without it every later
frame would move up one place and each ``<t>`` after the gap would point at the wrong frame; so does a QA pair
whose ``<t>`` is beyond the video's frames. Only the reference recipe's filters (over 10 frames, or 8 for memory
pre-filling, counted with the missing ones; over 5 instances) drop records without a count.

Sources: ``instit_image_short_caption`` (stage 1: one instance, <|ref|> prompt, short caption),
``instit_video_qa`` (region QA, instances injected as memory), ``instit_qa_memory`` (pre-fill the memory as the
released data does: question + ``"\nOptions:\n(X) <answer>"``, ``[k] <|ref|>`` -> ``[k] <|seg|>``, one round) and
``instit_qa_memory_two_round`` (our earlier form: that pre-fill without the option line, then the answer with memory).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelqa.data import masks, prompts
from pixelqa.data.registry import Source, register_source, rejected, skipped
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample, Turn, make_key
from pixelqa.data.sources._frame_order import frame_files, frame_order
from pixelqa.data.sources._image_files import cached_json, first_existing
from pixelqa.data.sources.video_io import read_frame_files
from pixelqa.data.sources.videorefer import check_form, key_frame, localize, mask_prompt, option_line, prefill_turns
from pixelqa.data.sources.vos import key_rng
from pixelqa.prompt_format import REF, object_ids_in, prefill_answer

IMAGE_FILES = ("inst_it_dataset_image_51k_w_mask.json", "inst_it_dataset_image_51k.json")
VIDEO_FILES = ("inst_it_dataset_video_21k_w_mask.json", "inst_it_dataset_video_21k.json")
MAX_OBJECTS = 5
_FRAME_TAG = re.compile(r"<(\d+)>")


def repair(text: str) -> str:
    """The reference loader's fixes of known slips: '<0>' -> '<1>', '[0k]' -> '[k]'."""
    text = text.replace("<0>", "<1>")
    return re.sub(r"\[0(\d)\]", r"[\1]", text)


def rest_of(path: str) -> str:
    """A release path without its first component (the release's own root folder)."""
    parts = path.replace("\\", "/").split("/", 1)
    return parts[1] if len(parts) == 2 else parts[0]


class InstITBase(Source):
    """Shared JSON access: entries are the work items."""

    splits = ("train",)
    files: tuple[str, ...] = VIDEO_FILES

    def path(self, root: Path) -> Path:
        """The annotation JSON."""
        return first_existing([Path(root) / f for f in self.files], f"{self.name} annotations")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The annotation JSON."""
        self.check_split(split)
        return [self.path(root)]

    def entries(self, root: Path) -> list:
        """The parsed entries (cached per process)."""
        p = self.path(root)
        data = cached_json(str(p))
        if not isinstance(data, list):
            raise TypeError(f"{p}: got {type(data).__name__}, expected a list of entries")
        return data

    def items(self, root: Path, split: str) -> Sequence[int]:
        """Entry indices."""
        self.check_split(split)
        return range(len(self.entries(root)))


@register_source("instit_image_short_caption")
class InstITImageShortCaption(InstITBase):
    """Stage 1: one sample per annotated instance: <|ref|> (mask prompt) -> its short caption."""

    files = IMAGE_FILES
    task = "region_caption"

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """The instance captions of one image."""
        root = Path(root)
        e = self.entries(root)[int(item)]
        where = f"{self.path(root).name}[{item}]"
        for k in ("image_id", "image_path", "instance_level_caption", "segmentations"):
            if not isinstance(e, dict) or k not in e:
                raise ValueError(f"{where}: missing {k!r} (the '_w_mask' release has instance masks)")
        frames = read_frame_files([str(root / "images_raw" / rest_of(e["image_path"]))])
        h, w = frames.size
        for oid, cap in e["instance_level_caption"].items():
            key = make_key(e["image_id"], oid)
            seg = e["segmentations"].get(str(oid))
            if not isinstance(seg, dict) or "mask" not in seg:
                raise ValueError(f"{where}.segmentations[{oid!r}]: missing, expected {{'mask': RLE}}")
            caption = (cap.get("short") if isinstance(cap, dict) else None) or ""
            if not caption.strip():
                # the release captions some instances in "long" only: nothing to teach a short caption with
                reason = f"{where}.instance_level_caption[{oid!r}]: no short caption"
                yield skipped(self.name, split, self.task, key, reason)
                continue
            rle = masks.normalize(seg["mask"])
            if list(rle["size"]) != [h, w]:
                raise ValueError(
                    f"{where}.segmentations[{oid!r}]: size {rle['size']}, expected the image size {[h, w]}"
                )
            if masks.area(rle) == 0:
                # a captioned instance whose mask is empty is broken: nothing to point the <|ref|> prompt at
                reason = f"{where}.segmentations[{oid!r}]: empty mask, expected the captioned instance's region"
                yield rejected(self.name, split, self.task, key, reason)
                continue
            yield Sample(
                key=key,
                source=self.name,
                split=split,
                task=self.task,
                media=Media("image", frames.frames, frames.size, frames.ext, None, [str(e["image_id"])]),
                objects={1: ObjectTrack(masks={0: rle})},
                prompts=[Prompt("mask", 0, 1, rle=rle)],
                turns=[
                    Turn("user", prompts.pick(prompts.REGION_CAPTION_QUESTIONS, key_rng(key), ref=REF, media="image")),
                    Turn("assistant", caption.strip()),
                ],
                answer=caption.strip(),
                meta={"image_id": str(e["image_id"]), "instance_id": str(oid)},
            )


class InstITVideoBase(InstITBase):
    """Video entries: frames, per-frame instance masks and question/answer pairs."""

    files = VIDEO_FILES
    max_frames = 10

    def talk(
        self, question: str, answer: str, objects: dict[int, ObjectTrack], key: str
    ) -> tuple[list[Prompt], list[Turn]]:
        """(prompts, turns) of one QA pair."""
        raise NotImplementedError

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """One sample per usable QA pair of a video."""
        root = Path(root)
        e = self.entries(root)[int(item)]
        where = f"{self.path(root).name}[{item}]"
        for k in ("video_id", "video_path", "question_answer_pairs", "segmentations"):
            if not isinstance(e, dict) or k not in e:
                raise ValueError(f"{where}: missing {k!r} (the '_w_mask' release has instance masks)")
        folder = root / "videos_raw" / rest_of(e["video_path"])
        if not folder.is_dir():
            raise FileNotFoundError(f"{where}: frame folder not found: {folder}")
        segs = e["segmentations"]
        if not isinstance(segs, dict):
            raise TypeError(f"{where}.segmentations: got {type(segs).__name__}, expected {{frame file: instances}}")
        paths = frame_files(folder)  # time order, hidden files (macOS `._*`) skipped
        on_disk = {p.name for p in paths}
        missing = frame_order(str(n) for n in segs if str(n) not in on_disk)
        num_frames = len(paths) + len(missing)  # the video's length as annotated: the recipe's filter counts it
        if not num_frames or num_frames > self.max_frames:
            return
        # damage to the whole video: each QA pair that would become a sample is rejected with it (one count each)
        problem = (
            f"segmentations name frames {missing} that {folder} lacks (it holds {[p.name for p in paths]}), "
            "expected every annotated frame: the <t> tags after a gap would point at the wrong frames"
            if missing
            else None
        )
        frames = None
        for i, qa in enumerate(e["question_answer_pairs"]):
            q, a = repair(str(qa.get("question", ""))), repair(str(qa.get("answer", "")))
            ids = object_ids_in(q + " " + a)
            key = make_key(e["video_id"], i)
            here = f"{where}.question_answer_pairs[{i}]"
            if not ids:
                # a general question about the video (the release leaves these out too): no region to remember
                yield skipped(self.name, split, self.task, key, f"{here}: names no instance [k]")
                continue
            if 0 in ids:
                # ids start from 1 (the release asserts it): a [0] that survives the repairs is a broken tag
                yield rejected(self.name, split, self.task, key, f"{here}: names [0], expected instance ids from 1")
                continue
            if len(ids) > MAX_OBJECTS:
                continue  # the reference recipe's filter (at most 5 objects)
            if problem is not None:
                yield rejected(self.name, split, self.task, key, f"{here}: {problem}")
                continue
            beyond = sorted({int(t) for t in _FRAME_TAG.findall(q + " " + a)} - set(range(1, num_frames + 1)))
            if beyond:
                reason = f"{here}: names frames {[f'<{t}>' for t in beyond]} of a {num_frames}-frame video ({folder})"
                yield rejected(self.name, split, self.task, key, reason + ", expected <1> .. <n>")
                continue
            if frames is None:
                try:
                    frames = read_frame_files([str(p) for p in paths])
                except (OSError, ValueError) as err:
                    frames = f"frames: {type(err).__name__}: {err}"  # each QA pair's reject, not the video's
            if isinstance(frames, str):
                yield rejected(self.name, split, self.task, key, f"{here}: {frames}")
                continue
            try:
                objects = self.instance_tracks(ids, paths, segs, frames.size)
            except (ValueError, TypeError) as err:
                yield rejected(self.name, split, self.task, key, f"{here}: {err}")
                continue
            unmasked = [oid for oid, o in objects.items() if key_frame(o) is None]
            if unmasked:
                # the release keeps these and then fails on the empty memory mask ('empty refer mask') when drawn
                reason = f"{here}: names {[f'[{k}]' for k in unmasked]} with no mask on any frame of {folder.name}"
                yield rejected(self.name, split, self.task, key, reason + ", expected each named instance segmented")
                continue
            prompts, turns = self.talk(q, a, objects, key)
            yield Sample(
                key=key,
                source=self.name,
                split=split,
                task=self.task,
                media=Media(
                    "video" if len(paths) > 1 else "image",
                    frames.frames,
                    frames.size,
                    frames.ext,
                    None,
                    [p.name for p in paths],
                ),
                objects=objects,
                prompts=prompts,
                turns=turns,
                answer=turns[-1].text,  # what the sample teaches (a pre-fill answer in memory pre-filling)
                meta={"video_id": str(e["video_id"]), "qa_index": i, "keep_all_frames": True},
            )

    def instance_tracks(
        self, ids: Sequence[int], paths: Sequence[Path], segs: dict, size: tuple[int, int]
    ) -> dict[int, ObjectTrack]:
        """Each named instance's masks on the annotated frames of `paths` (absent from an annotated frame: empty);
        ValueError naming the segmentations entry for a mask of another size or a malformed frame record."""
        h, w = size
        objects: dict[int, ObjectTrack] = {}
        for oid in ids:
            ms = {}
            for t, p in enumerate(paths):
                per = segs.get(p.name)
                if per is None:
                    continue  # frame not annotated
                if not isinstance(per, dict):
                    raise ValueError(
                        f"segmentations[{p.name!r}]: got {type(per).__name__}, expected {{instance: {{'mask': RLE}}}}"
                    )
                m = per.get(str(oid))
                rle = masks.normalize(m["mask"]) if isinstance(m, dict) and "mask" in m else masks.empty(h, w)
                if list(rle["size"]) != [h, w]:
                    raise ValueError(f"segmentations[{p.name!r}][{oid}]: size {rle['size']}, expected {[h, w]}")
                ms[t] = rle
            objects[oid] = ObjectTrack(masks=ms)
        return objects


@register_source("instit_video_qa")
class InstITVideoQA(InstITVideoBase):
    """Region QA: the named instances are injected as memory."""

    task = "region_qa"

    def talk(
        self, question: str, answer: str, objects: dict[int, ObjectTrack], key: str
    ) -> tuple[list[Prompt], list[Turn]]:
        """Question as is (it names [k]); memory of every named instance."""
        return [], [Turn("user", question, memory_objects=sorted(objects)), Turn("assistant", answer)]


@register_source("instit_qa_memory")
class InstITQAMemory(InstITVideoBase):
    """Memory pre-filling (`form`, see videorefer.MEMORY_FORMS): segment the instances a QA pair names."""

    task = "memory_qa"
    max_frames = 8
    form = "released"

    def talk(
        self, question: str, answer: str, objects: dict[int, ObjectTrack], key: str
    ) -> tuple[list[Prompt], list[Turn]]:
        """Released: question + correct option, [k] <|ref|> after each instance's first mention -> [k] <|seg|>;
        two_round: that pre-fill over the question alone, then the question answered with memory."""
        if check_form(self.form, self.name) == "released":
            with_ref, _ = add_refs(question + option_line(answer, key), [])
            return prefill_turns(with_ref, objects, key, key)[:2]
        ids = sorted(objects)
        with_ref, order = add_refs(question, ids)
        prompts = [mask_prompt(objects[k], k) for k in order]
        turns = [
            Turn("user", localize(with_ref, key)),
            Turn("assistant", prefill_answer(ids), seg_objects=ids),
            Turn("user", question, memory_objects=ids),
            Turn("assistant", answer),
        ]
        return prompts, turns


@register_source("instit_qa_memory_two_round")
class InstITQAMemoryTwoRound(InstITQAMemory):
    """`instit_qa_memory` in our two-round form (pre-fill, then the question answered with memory)."""

    form = "two_round"


def add_refs(text: str, also: Sequence[int]) -> tuple[str, list[int]]:
    """(text with `` <|ref|>`` after the first mention of each ``[k]``, the ids in that order); ids of `also` that the
    text does not name get `` [k] <|ref|>`` appended (instances named only in the answer are still prompted)."""
    order = object_ids_in(text)
    for k in order:
        text = text.replace(f"[{k}]", f"[{k}] {REF}", 1)
    for k in also:
        if k not in order:
            text += f" [{k}] {REF}"
            order.append(k)
    return text, order
