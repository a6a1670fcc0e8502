"""GroundMoRe (Deng et al., CVPR 2025): motion-grounded video reasoning — answer a question and segment the
object(s) it is about.

Raw layout (as UniPixel reads the release)::

    <root>/trainval_v2.json, <root>/test_v2.json   {"videos": {vid: {"clip_start"?, "questions": {qid: {"question",
                                                     "answer", "q_type", "obj_id": "1, 2", "action_start"?,
                                                     "action_end"? (seconds)}}}}}
    <root>/annotations/<vid>/images/<frame>.jpg
    <root>/annotations/<vid>/masks/<frame>.png     palette PNG, pixel value = object id (annotated frames only)

train keeps only the frames that have a mask; test keeps the official 20 frames, `linspace(0, n - 1, 20)` cast to
int over the video's frames in frame-number order (`pixelqa.frame_sampling.groundmore_indices`; a shorter video
repeats frames, as the official run does), masks where they exist. Videos without an annotation folder are
skipped, as in the reference loader. Damage to a video (unreadable frames, a mask PNG of another size, no mask
PNG at all in train, where the frames are the masked ones) rejects each of its questions, so the count says how
many samples were lost; so does a malformed question record (no question / answer / obj_id, a bad obj_id or
action window), on its own. A question whose obj_id no mask of the video shows (its target would be empty on every
frame) is a counted reject naming the file, the video, the question and the ids the masks hold; an object absent
only from the test split's 20 sampled frames is kept, as the official evaluation does. Target = union of the
question's objects; meta keeps q_type (Causal / Sequential / Counterfactual / Descriptive), the answer,
`frame_indices` (each kept frame's index among the video's frames) and, when the question has one,
`action_window` {start, end, clip_start} in seconds: the official ground truth is zero outside
[(start - clip_start) * 6, (end - clip_start) * 6 - 1] (frame indices at 6 fps).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected
from pixelqa.data.schema import Media, ObjectTrack, Sample, Turn, make_key
from pixelqa.data.sources._frame_order import frame_order, is_hidden
from pixelqa.data.sources._image_files import cached_json
from pixelqa.data.sources.video_io import FrameSet, read_frame_files, read_label_png
from pixelqa.data.sources.vos import variant, videos_of
from pixelqa.frame_sampling import groundmore_indices
from pixelqa.prompt_format import SEG, SEG_QUESTION_TEMPLATES, seg_instruction

SPLIT_FILES = {"train": "trainval_v2.json", "test": "test_v2.json"}
TEST_FRAMES = 20


def action_window(video: dict, q: dict, where: str) -> dict | None:
    """{start, end, clip_start} (seconds) of a question's action, None when it records none."""
    start, end = q.get("action_start", q.get("start")), q.get("action_end", q.get("end"))
    if start is None or end is None:
        return None
    clip = video.get("clip_start", video.get("start", 0.0))
    try:
        window = {"start": float(start), "end": float(end), "clip_start": float(clip or 0.0)}
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: action_start / action_end / clip_start: got {start!r} / {end!r} / {clip!r}, expected seconds"
        ) from None
    if window["end"] < window["start"]:
        raise ValueError(f"{where}: action_end {end!r} is before action_start {start!r}, expected start <= end")
    return window


def label_ids(label_maps: Iterable[np.ndarray]) -> set[int]:
    """The object ids (pixel values > 0) in palette label maps."""
    return {int(v) for lab in label_maps for v in np.unique(lab) if v}


@register_source("groundmore")
class GroundMoRe(Source):
    """One sample per question."""

    splits = ("train", "test")
    task = "reason_vos"

    def meta_path(self, root: Path, split: str) -> Path:
        """The questions JSON of a split."""
        self.check_split(split)
        p = Path(root) / SPLIT_FILES[split]
        if not p.is_file():
            raise FileNotFoundError(f"groundmore {split}: expected {p}")
        return p

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The questions JSON."""
        return [self.meta_path(root, split)]

    def items(self, root: Path, split: str) -> Sequence[str]:
        """Video ids in file order (those with an annotation folder)."""
        p = self.meta_path(root, split)
        return [v for v in videos_of(cached_json(str(p)), str(p)) if (Path(root) / "annotations" / v).is_dir()]

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """All questions of video `item`; a bad question, or damage to the video, is a counted reject per question."""
        p = self.meta_path(root, split)
        video = videos_of(cached_json(str(p)), str(p))[item]
        questions = video.get("questions")
        if not isinstance(questions, dict):
            raise TypeError(f"{p}: videos[{item!r}].questions: got {type(questions).__name__}, expected a mapping")
        adir = Path(root) / "annotations" / item
        mask_files = {m.stem: m for m in (adir / "masks").glob("*.png") if not is_hidden(m)}  # no macOS `._*`
        try:
            names, indices, frames, labels = self.load(adir, split, mask_files)
            problem = None
        except (OSError, ValueError) as e:
            problem = f"{type(e).__name__}: {e}"
        shown = label_ids(labels.values()) if problem is None else set()  # ids some mask of the video shows
        unloaded = sorted(set(mask_files) - set(names)) if problem is None else []
        for qid, q in questions.items():
            key = make_key(item, qid)
            where = f"{p}: videos[{item!r}].questions[{qid!r}]"
            try:
                question, answer, obj_ids, window = self.parse_question(video, q, where)
            except ValueError as e:
                # one bad record is its own counted reject: the video's other questions are still converted
                yield rejected(self.name, split, self.task, key, str(e))
                continue
            if problem is not None:
                yield rejected(self.name, split, self.task, key, f"{where}: {problem}")
                continue
            if not set(obj_ids) <= shown and unloaded:  # test: the masks of unsampled frames, read only if needed
                shown |= label_ids(read_label_png(str(mask_files[n])) for n in unloaded)
                unloaded = []
            absent = sorted(set(obj_ids) - shown)
            if absent or not obj_ids:
                # an object no mask of the video shows (or none named): the target would be empty on every frame
                what = (
                    f"objects {absent} in no mask of {adir / 'masks'} (ids there: {sorted(shown)})"
                    if absent
                    else "no object"
                )
                reason = f"{where}: obj_id {q['obj_id']!r} names {what}, expected objects segmented on some frame"
                yield rejected(self.name, split, self.task, key, reason)
                continue
            target = {t: masks.encode(np.isin(lab, obj_ids)) for t, lab in labels.items()}
            turns = [
                # released 'question' family (the evaluation asks its first variant); answer "{answer} <|seg|>."
                Turn("user", seg_instruction(question, "question", variant(SEG_QUESTION_TEMPLATES, key))),
                Turn("assistant", f"{answer} {SEG}." if answer else f"{SEG}.", seg_objects=[1]),
            ]
            yield Sample(
                key=key,
                source=self.name,
                split=split,
                task=self.task,
                media=Media(
                    "video" if len(frames.frames) > 1 else "image",
                    frames.frames,
                    frames.size,
                    frames.ext,
                    None,
                    list(names),
                ),
                objects={1: ObjectTrack(masks=target)},
                turns=turns,
                answer=answer,
                meta={
                    "video": item,
                    "question_id": str(qid),
                    "question": question,
                    "question_type": q.get("q_type"),
                    "obj_ids": obj_ids,
                    "answer": answer,
                    **({"frame_indices": indices} if indices is not None else {}),
                    **({"action_window": window} if window is not None else {}),
                },
            )

    def load(
        self, adir: Path, split: str, mask_files: dict[str, Path]
    ) -> tuple[list[str], list[int] | None, FrameSet, dict[int, np.ndarray]]:
        """(frame names, test frame indices or None, frames, {frame position: label map}) of one video; raises
        naming the folder or the file when the video is unusable."""
        if split == "train":
            names = [m.stem for m in frame_order(mask_files.values())]
            if not names:
                # train keeps the masked frames only: without a mask PNG there is no frame to train on
                raise FileNotFoundError(f"no mask PNG in {adir / 'masks'}, expected the annotated frames")
            image_paths = [adir / "images" / f"{n}.jpg" for n in names]
            indices = None
        else:
            all_images = frame_order(q for q in (adir / "images").glob("*.jpg") if not is_hidden(q))
            if not all_images:
                raise FileNotFoundError(f"no frames in {adir / 'images'}")
            indices = groundmore_indices(len(all_images), TEST_FRAMES)[0]
            image_paths = [all_images[i] for i in indices]
            names = [q.stem for q in image_paths]
        frames = read_frame_files([str(q) for q in image_paths])
        labels = {t: read_label_png(str(mask_files[n])) for t, n in enumerate(names) if n in mask_files}
        for t, lab in labels.items():
            if lab.shape != frames.size:
                raise ValueError(f"{mask_files[names[t]]}: size {lab.shape}, expected the frame size {frames.size}")
        return names, indices, frames, labels

    def parse_question(self, video: dict, q: Any, where: str) -> tuple[str, str, list[int], dict | None]:
        """(question ending in '?', answer, object ids, action window or None) of one question record; ValueError
        naming it when it is malformed."""
        for k in ("question", "answer", "obj_id"):
            if not isinstance(q, dict) or k not in q:
                raise ValueError(f"{where}: has no {k!r}, expected question, answer and obj_id")
        try:
            obj_ids = [int(o) for o in str(q["obj_id"]).split(",") if o.strip()]
        except ValueError:
            raise ValueError(f"{where}: obj_id {q['obj_id']!r}, expected comma-separated integers") from None
        question = " ".join(str(q["question"]).split())
        if not question.endswith("?"):
            question += "?"
        return question, str(q["answer"]).strip(), obj_ids, action_window(video, q, where)
