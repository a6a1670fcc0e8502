"""The referring-VOS family: expression JSONs + frame folders + masks, shared by Ref-YouTube-VOS, Ref-DAVIS17,
MeViS, ReVOS, LV-VIS and Ref-SAV (valid).

Two mask layouts occur in the releases:

- palette PNGs (Ref-YouTube-VOS, Ref-DAVIS17): ``Annotations/<video>/<frame>.png``, pixel value = object id;
  a frame without a PNG is not annotated;
- a mask dict (MeViS, ReVOS, LV-VIS, Ref-SAV valid, and UniPixel-SFT-1M's re-pack of Ref-YouTube-VOS /
  Ref-DAVIS17): ``{anno_id: [RLE or null per frame]}`` (JSON) or ``{expression index: [...]}`` (pickle);
  every frame is annotated, null = object not visible. The pickle's index counts over the **sorted** video
  ids, and within a video over the **sorted** expression ids compared as strings ("10" before "2"), as the
  official evaluator and VISA read these files (not the position in the JSON, which differs for videos with
  11 or more expressions).

One bad expression (not a dict, no or empty 'exp' text, a missing anno_id, a mask of the wrong size or length,
unreadable frames) yields a `rejected` sample naming the file and the record; the video's other expressions are
still converted. Damage to the whole video (an empty or malformed frames list, unreadable frames, an annotation
folder with no PNG of the video's frames on a split that has masks) is one reject per expression, so the count
says how many samples were lost. On the palette-PNG path, a training expression whose obj_id no PNG of the video
shows is a reject naming the ids the PNGs hold: its target would be "absent" on every frame (objectness 0), which
teaches the model to answer a referring expression with nothing; evaluation splits keep it with its empty target,
as the release scores it. An object absent from only some frames is kept.

Every expression becomes one sample with one target object (id 1) whose masks are the union of the
expression's instances, as the J&F protocols of these benchmarks score it.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixelqa.data import masks, prompts
from pixelqa.data.registry import rejected
from pixelqa.data.schema import Media, ObjectTrack, Sample, Turn, make_key
from pixelqa.data.sources._image_files import cached_json, cached_pickle, file_version
from pixelqa.data.sources.video_io import FrameSet, read_frame_files, read_label_png
from pixelqa.prompt_format import seg_instruction, seg_templates

TARGET_ID = 1


def pick(options: Sequence[str], key: str) -> str:
    """A deterministic choice among `options`, seeded by the sample key (stable across processes)."""
    return options[zlib.crc32(key.encode("utf-8")) % len(options)]


def key_rng(key: str) -> np.random.Generator:
    """A generator seeded by the sample key, for `pixelqa.data.prompts.pick` (same key, same wording)."""
    return np.random.default_rng(zlib.crc32(key.encode("utf-8")))


def variant(templates: Sequence[str], key: str) -> int:
    """The index of the template a sample uses, drawn from `key_rng(key)` (same key, same wording)."""
    return int(key_rng(key).integers(0, len(templates)))


def seg_family(text: str, family: str | None) -> str:
    """The released instruction family of an expression: `family` when the source fixes one, else ReVOS's rule
    ('sentence' for a question ending in '?', 'query' otherwise)."""
    if family is not None:
        return family
    return "sentence" if text.endswith("?") else "query"


def seg_turns(
    expression: str,
    key: str,
    object_ids: Sequence[int] = (TARGET_ID,),
    media: str = "video",
    family: str | None = "query",
) -> list[Turn]:
    """The released instruction of `family` for an expression (variant and answer fixed by the sample key), and
    the answer segmenting it."""
    text = " ".join(expression.split())
    if not text:
        raise ValueError(f"expression: got {expression!r} for sample {key}, expected non-empty text")
    rng = key_rng(key)
    templates = seg_templates(seg_family(text, family), media)
    user = seg_instruction(text, seg_family(text, family), int(rng.integers(0, len(templates))), media)
    return [
        Turn("user", user),
        Turn("assistant", prompts.seg_answer(list(object_ids), rng), seg_objects=list(object_ids)),
    ]


@dataclass
class Expression:
    """One referring expression of a video, as the meta_expressions JSONs store it."""

    exp_id: str
    text: str
    obj_ids: list[Any] = field(default_factory=list)
    anno_ids: list[Any] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    error: str | None = None  # why the record is unusable: the converter yields a counted reject in its place


def videos_of(meta: Any, path: str) -> dict:
    """The ``videos`` mapping of a meta_expressions JSON, checked."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise TypeError(
            f"{path}: got {type(meta).__name__} without a 'videos' mapping, "
            f'expected {{"videos": {{video id: entry}}}}'
        )
    return meta["videos"]


def as_list(value: Any) -> list:
    """obj_id / anno_id fields come as a scalar (Ref-YouTube-VOS) or a list (MeViS style)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expressions_of(video: Any, vid: str, path: str) -> list[Expression]:
    """The expressions of one video entry, in file order; a malformed one carries its `error` (one reject each)."""
    exps = video.get("expressions") if isinstance(video, dict) else None
    if not isinstance(exps, dict):
        raise TypeError(f"{path}: videos[{vid!r}].expressions: got {type(exps).__name__}, expected a mapping")
    out = []
    for exp_id, e in exps.items():
        # Checked per expression, not for the video: one damaged record must not cost the video's good ones.
        error = None
        if not isinstance(e, dict) or "exp" not in e:
            error = f"got {e!r:.80}, expected a dict with 'exp'"
        elif not isinstance(e["exp"], str) or not e["exp"].strip():
            error = f"exp: got {e['exp']!r:.80}, expected non-empty text"
        if error is not None:
            out.append(Expression(str(exp_id), "", raw=e if isinstance(e, dict) else {}, error=error))
            continue
        out.append(Expression(str(exp_id), e["exp"], as_list(e.get("obj_id")), as_list(e.get("anno_id")), e))
    return out


def frame_names_or_reason(video: dict, vid: str) -> list[str] | str:
    """The frame names of one video entry (a mapping, see `expressions_of`), or why it has none: the converters
    reject each of the video's expressions with that reason, so the count says how many samples were lost."""
    frames = video.get("frames")
    if not isinstance(frames, list) or not frames:
        return f"videos[{vid!r}].frames: got {frames!r:.80}, expected a non-empty list of names"
    return [str(f) for f in frames]


def read_video_folder(folder: Path, names: Sequence[str], ext: str = ".jpg") -> FrameSet:
    """The frames `names` of a frame folder (``<folder>/<name><ext>``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder not found: {folder}")
    return read_frame_files([str(folder / f"{n}{ext}") for n in names])


@dataclass
class PaletteVideo:
    """The palette-PNG annotation of one video: per annotated frame position, the RLE of each object id on it
    (read once per video; every expression of the video is a union of some of these)."""

    folder: Path
    size: tuple[int, int]
    by_frame: dict[int, dict[int, dict]]  # frame position -> {object id: RLE}; frames without a PNG are absent

    def ids(self) -> list[int]:
        """The object ids some PNG of the video shows."""
        return sorted({i for per in self.by_frame.values() for i in per})

    def union(self, obj_ids: Sequence[Any], allow_absent: bool = False) -> dict[int, dict]:
        """Masks of the union of `obj_ids` on the annotated frames; unless `allow_absent`, ValueError naming the ids
        the PNGs hold when one of `obj_ids` is on none of them (the target would be empty on every frame)."""
        ids = [int(o) for o in obj_ids]
        shown = self.ids()
        absent = sorted(set(ids) - set(shown))
        if absent and not allow_absent:
            raise ValueError(
                f"obj_id {[str(o) for o in obj_ids]} names objects {absent} in no annotation PNG of {self.folder} "
                f"(ids there: {shown}), expected objects segmented on some frame"
            )
        h, w = self.size
        out: dict[int, dict] = {}
        for t, per in self.by_frame.items():
            present = [per[i] for i in ids if i in per]
            out[t] = masks.merge(present) if present else masks.empty(h, w)
        return out


def read_palette_video(ann_dir: Path, names: Sequence[str], size: tuple[int, int]) -> PaletteVideo:
    """The palette PNGs ``<ann_dir>/<name>.png`` of the frames `names` (a frame without one is not annotated).

    FileNotFoundError when none of the frames has a PNG: on a split with masks that is a missing or partly
    extracted annotation folder, not a video without objects. ValueError for a PNG of another size."""
    by_frame: dict[int, dict[int, dict]] = {}
    for t, n in enumerate(names):
        p = ann_dir / f"{n}.png"
        if not p.is_file():
            continue
        label = read_label_png(str(p))
        if label.shape != size:
            raise ValueError(f"annotation {p}: size {label.shape}, expected the frame size {size}")
        by_frame[t] = {int(i): masks.encode(label == i) for i in np.unique(label) if i > 0}
    if not by_frame:
        where = ann_dir if ann_dir.is_dir() else f"{ann_dir} (no such folder)"
        raise FileNotFoundError(
            f"no annotation PNG of the video's {len(names)} frames in {where}, expected <frame>.png palette masks"
        )
    return PaletteVideo(ann_dir, size, by_frame)


def union_rles(
    per_instance: Sequence[Sequence[Any]], num_frames: int, size: tuple[int, int], where: str
) -> dict[int, dict]:
    """Per-frame union of instance RLE lists (null = not visible); every frame counts as annotated."""
    h, w = size
    out: dict[int, dict] = {}
    for seq in per_instance:
        if not isinstance(seq, (list, tuple)) or len(seq) != num_frames:
            n = len(seq) if isinstance(seq, (list, tuple)) else type(seq).__name__
            raise ValueError(f"{where}: got {n} masks, expected one per frame ({num_frames})")
    for t in range(num_frames):
        present = [masks.normalize(seq[t]) for seq in per_instance if seq[t] is not None]
        for r in present:
            if list(r["size"]) != [h, w]:
                raise ValueError(f"{where}: frame {t} RLE size {r['size']}, expected the frame size {[h, w]}")
        out[t] = masks.merge(present) if present else masks.empty(h, w)
    return out


def rvos_sample(
    *,
    source: str,
    split: str,
    task: str,
    vid: str,
    exp: Expression,
    frames: FrameSet,
    frame_ids: list[str],
    target_masks: dict[int, dict],
    meta: dict,
    where: str | None = None,
    family: str | None = "query",
) -> Sample:
    """One referring-segmentation sample, or a rejected one naming `where` when the expression text is unusable.

    family: the released instruction family of the source (None: ReVOS's rule, see `seg_family`)."""
    key = make_key(vid, exp.exp_id)
    kind = "video" if len(frames.frames) > 1 else "image"
    try:
        turns = seg_turns(exp.text, key, media=kind, family=family)
    except ValueError as e:
        # Rejected in place (counted by the builder) so the caller's later expressions are still converted.
        return rejected(source, split, task, key, f"{where or f'video {vid!r} expression {exp.exp_id!r}'}: {e}")
    full_meta = {
        "video": vid,
        "exp_id": exp.exp_id,
        "expression": exp.text,
        "obj_ids": [str(o) for o in exp.obj_ids],
        "anno_ids": [str(a) for a in exp.anno_ids],
        **meta,
    }
    media = Media(kind, frames.frames, frames.size, frames.ext, frames.fps, list(frame_ids))
    return Sample(
        key=key,
        source=source,
        split=split,
        task=task,
        media=media,
        objects={TARGET_ID: ObjectTrack(masks=target_masks)},
        turns=turns,
        meta=full_meta,
    )


class MaskDictVOS:
    """Shared reader of the MeViS-style layout: meta_expressions JSON + mask_dict.json + JPEG frame folders.

    Subclasses (Source subclasses) set `task` and implement `paths(root, split)` returning
    (meta JSON, mask dict JSON or None, frame-folder root). Videos are the work items.
    """

    task = "rvos"
    family: str | None = "query"  # the released instruction family (None: ReVOS's '?' rule)
    skip_empty_in_train = True  # the training recipes skip expressions that refer to nothing

    def paths(self, root: Path, split: str) -> tuple[Path, Path | None, Path]:
        """(meta_expressions JSON, mask_dict JSON or None when the split has no masks, frame root)."""
        raise NotImplementedError

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The meta JSON and the mask dict."""
        self.check_split(split)  # type: ignore[attr-defined]
        meta, mask_dict, _ = self.paths(Path(root), split)
        return [p for p in (meta, mask_dict) if p is not None]

    def items(self, root: Path, split: str) -> Sequence[str]:
        """Video ids in file order."""
        self.check_split(split)  # type: ignore[attr-defined]
        meta_path, _, _ = self.paths(Path(root), split)
        return list(videos_of(cached_json(str(meta_path)), str(meta_path)))

    def extra_meta(self, root: Path, split: str, vid: str, video: dict, exp: Expression) -> dict:
        """Source-specific meta of one expression (default: none)."""
        return {}

    def expression_text(self, exp: Expression) -> str:
        """The expression as shown to the model (LV-VIS overrides: its 'expressions' are class names)."""
        return exp.text

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """All expression samples of video `item`; a bad expression yields a rejected sample, not an error."""
        root = Path(root)
        meta_path, mask_path, frame_root = self.paths(root, split)
        vids = videos_of(cached_json(str(meta_path)), str(meta_path))
        if item not in vids:
            raise ValueError(f"item: got video {item!r}, expected a video of {meta_path}")
        video = vids[item]
        exps = expressions_of(video, item, str(meta_path))
        mask_dict = cached_json(str(mask_path)) if mask_path is not None else None
        train = split.startswith("train")
        # read once per video, when an expression needs them; str = why they cannot be (each expression's reject)
        frames: FrameSet | str | None = None
        names = frame_names_or_reason(video, item)
        if isinstance(names, str):
            frames, names = names, []
        for exp in exps:
            where = expression_where(meta_path, item, exp.exp_id)
            if exp.error is not None:  # before the filter below: a damaged record is counted, never dropped
                yield rejected(self.name, split, self.task, make_key(item, exp.exp_id), f"{where}: {exp.error}")
                continue
            if train and self.skip_empty_in_train and not exp.anno_ids and not exp.obj_ids:
                continue  # the reference recipe's filter: an expression that refers to nothing teaches nothing
            if frames is None:
                frames = read_frames_or_reason(self.frame_folder(frame_root, item), names)
            if isinstance(frames, str):
                yield rejected(self.name, split, self.task, make_key(item, exp.exp_id), f"{where}: {frames}")
                continue
            try:
                target = self.target_masks(exp, mask_dict, mask_path, names, frames.size, where)
            except (ValueError, TypeError) as e:
                yield rejected(self.name, split, self.task, make_key(item, exp.exp_id), f"{where}: {e}")
                continue
            span = self.crop(split, item, target, len(names))
            if span is None:
                sample_frames, sample_names = frames, names
            else:
                s, e = span
                if e - s < 2:
                    continue  # the reference recipe's filter: visible on fewer than 2 frames of a cropped video
                sample_frames = FrameSet(frames.frames[s:e], frames.ext, frames.size, frames.fps)
                sample_names = names[s:e]
                target = {t - s: r for t, r in target.items() if s <= t < e}
            shown = Expression(exp.exp_id, self.expression_text(exp), exp.obj_ids, exp.anno_ids, exp.raw)
            known = mask_dict is not None or "obj_id" in exp.raw or "anno_id" in exp.raw
            meta = {
                "no_target": (not exp.anno_ids and not exp.obj_ids) if known else None,
                "has_masks": mask_dict is not None,
            }
            try:
                meta.update(self.extra_meta(root, split, item, video, exp))
            except (ValueError, TypeError) as e:
                yield rejected(self.name, split, self.task, make_key(item, exp.exp_id), f"{where}: {e}")
                continue
            yield rvos_sample(
                source=self.name,
                split=split,
                task=self.task,
                vid=item,
                exp=shown,  # type: ignore[attr-defined]
                frames=sample_frames,
                frame_ids=sample_names,
                target_masks=target,
                meta=meta,
                where=where,
                family=self.family,
            )

    def target_masks(
        self,
        exp: Expression,
        mask_dict: dict | None,
        mask_path: Path | None,
        names: Sequence[str],
        size: tuple[int, int],
        where: str,
    ) -> dict[int, dict]:
        """The union of the expression's instances from the mask dict ({} when the split has no masks)."""
        if mask_dict is None:
            return {}
        if len(exp.obj_ids) != len(exp.anno_ids):
            raise ValueError(
                f"obj_id {exp.obj_ids} and anno_id {exp.anno_ids} differ in length, expected one anno_id per object"
            )
        per_inst = []
        for a in exp.anno_ids:
            if str(a) not in mask_dict:
                raise ValueError(f"anno_id {a!r} is missing from {mask_path}")
            per_inst.append(mask_dict[str(a)])
        return union_rles(per_inst, len(names), size, f"{mask_path}[anno_id {', '.join(map(str, exp.anno_ids))}]")

    def crop(self, split: str, vid: str, target: dict[int, dict], num_frames: int) -> tuple[int, int] | None:
        """Frame span [start, end) to keep for one expression, or None to keep the whole video (default)."""
        return None

    def frame_folder(self, frame_root: Path, vid: str) -> Path:
        """The folder of one video's frames."""
        return frame_root / vid


class PaletteVOS:
    """Shared reader of the Ref-YouTube-VOS / Ref-DAVIS17 layout: meta_expressions JSON + JPEGImages +
    palette-PNG Annotations, or UniPixel-SFT-1M's ``mask_dict.pkl`` (one RLE list per expression, indexed over
    sorted video ids x sorted expression ids, see `pickle_index`) in place of the PNGs.

    Subclasses set `task` and implement `layout(root, split)`.
    """

    task = "rvos"
    family: str | None = "query"  # the released instruction family

    def layout(self, root: Path, split: str) -> tuple[Path, Path, Path | None, Path | None]:
        """(meta JSON, frame root, Annotations root or None, mask_dict.pkl or None)."""
        raise NotImplementedError

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The meta JSON (and the pickled mask dict when that is the mask source)."""
        self.check_split(split)  # type: ignore[attr-defined]
        meta, _, _, pkl = self.layout(Path(root), split)
        return [meta] + ([pkl] if pkl is not None else [])

    def items(self, root: Path, split: str) -> Sequence[str]:
        """Video ids in file order."""
        self.check_split(split)  # type: ignore[attr-defined]
        meta_path = self.layout(Path(root), split)[0]
        return list(videos_of(cached_json(str(meta_path)), str(meta_path)))

    def extra_meta(self, vid: str, video: dict, exp: Expression, position: int) -> dict:
        """Source-specific meta (default: none); `position` is the expression's index within its video."""
        return {}

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """All expression samples of video `item`; a bad expression yields a rejected sample, not an error."""
        meta_path, frame_root, ann_root, pkl = self.layout(Path(root), split)
        vids = videos_of(cached_json(str(meta_path)), str(meta_path))
        if item not in vids:
            raise ValueError(f"item: got video {item!r}, expected a video of {meta_path}")
        video = vids[item]
        exps = expressions_of(video, item, str(meta_path))
        names = frame_names_or_reason(video, item)
        # str = why the video cannot be read: each of its expressions is rejected with it (one count per sample)
        frames = names if isinstance(names, str) else read_frames_or_reason(frame_root / item, names)
        index, mask_dict, masks_problem = None, None, None
        if pkl is not None and ann_root is None:
            index = pickle_index(str(meta_path))
            mask_dict = cached_pickle(str(pkl))
            if not isinstance(mask_dict, dict):
                masks_problem = f"{pkl}: got {type(mask_dict).__name__}, expected a dict expression index -> masks"
        labels: PaletteVideo | str | None = None  # the video's PNGs, read on first need; str = why they cannot be
        for pos, exp in enumerate(exps):
            where = expression_where(meta_path, item, exp.exp_id)
            key = make_key(item, exp.exp_id)
            if exp.error is not None:
                yield rejected(self.name, split, self.task, key, f"{where}: {exp.error}")  # type: ignore[attr-defined]
                continue
            if isinstance(frames, str) or masks_problem is not None:
                reason = frames if isinstance(frames, str) else masks_problem
                yield rejected(self.name, split, self.task, key, f"{where}: {reason}")  # type: ignore[attr-defined]
                continue
            try:
                if ann_root is not None:
                    if not exp.obj_ids:
                        raise ValueError("no obj_id, expected the annotated object id")
                    if labels is None:
                        labels = read_palette_or_reason(ann_root / item, names, frames.size)
                    if isinstance(labels, str):
                        raise ValueError(labels)
                    # evaluation splits keep such an expression, empty, as the release scores it (Ref-DAVIS17's 5
                    # expressions without a mask): rejecting it would change the benchmark's denominator
                    target = labels.union(exp.obj_ids, allow_absent=not split.startswith("train"))
                elif index is not None:
                    idx = index[(item, exp.exp_id)]
                    entry = mask_dict.get(str(idx), mask_dict.get(idx))  # type: ignore[union-attr]
                    if entry is None:
                        raise ValueError(f"expression index {idx} is missing from {pkl}")
                    target = union_rles([entry], len(names), frames.size, f"{pkl}[{idx!r}]")
                else:
                    target = {}
                meta = {"has_masks": ann_root is not None or index is not None, "no_target": False}
                meta.update(self.extra_meta(item, video, exp, pos))
                if index is not None:
                    meta["mask_index"] = index[(item, exp.exp_id)]
            except (ValueError, TypeError) as e:
                yield rejected(self.name, split, self.task, key, f"{where}: {e}")  # type: ignore[attr-defined]
                continue
            yield rvos_sample(
                source=self.name,  # type: ignore[attr-defined]
                split=split,
                task=self.task,
                vid=item,
                exp=exp,
                frames=frames,
                frame_ids=names,
                target_masks=target,
                meta=meta,
                where=where,
                family=self.family,
            )


def expression_where(meta_path: Path | str, vid: str, exp_id: str) -> str:
    """The record of one expression in error messages: file and path inside it."""
    return f"{meta_path}: videos[{vid!r}].expressions[{exp_id!r}]"


def read_frames_or_reason(folder: Path, names: Sequence[str]) -> FrameSet | str:
    """The video's frames, or the reason they cannot be read (naming the folder or frame file)."""
    try:
        return read_video_folder(folder, names)
    except (OSError, ValueError) as e:
        return f"frames: {type(e).__name__}: {e}"


def read_palette_or_reason(ann_dir: Path, names: Sequence[str], size: tuple[int, int]) -> PaletteVideo | str:
    """The video's palette PNGs, or the reason they cannot be read (naming the folder or the PNG)."""
    try:
        return read_palette_video(ann_dir, names, size)
    except (OSError, ValueError) as e:
        return f"annotations: {type(e).__name__}: {e}"


def pickle_index(meta_path: str | Path) -> dict[tuple[str, str], int]:
    """(video id, expression id) -> its key in mask_dict.pkl: the running count over sorted video ids and, within
    each, sorted expression ids as strings ("10" sorts before "2"), as the published readers number the file."""
    return _pickle_index(*file_version(meta_path))


@functools.lru_cache(maxsize=4)
def _pickle_index(meta_path: str, mtime_ns: int, size: int) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    videos = videos_of(cached_json(meta_path), meta_path)
    for vid in sorted(videos):
        exps = videos[vid].get("expressions") if isinstance(videos[vid], dict) else None
        # A malformed video entry is that video's reject (expressions_of); it must not break every video's index.
        for exp_id in sorted(str(e) for e in (exps if isinstance(exps, dict) else {})):
            out[(vid, exp_id)] = len(out)
    return out
