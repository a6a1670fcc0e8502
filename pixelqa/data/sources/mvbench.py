"""MVBench (Li et al., CVPR 2024): 20 temporal video understanding tasks as multiple-choice questions.

Raw layout (the release)::

    <root>/json/<task>.json      [{"video": <name>, "question", "candidates": [..], "answer": <candidate text>,
                                   "start"?, "end"? (seconds, tasks with a bound)}]
    <root>/video/<prefix>/<name> mp4 / webm / avi, or a frame folder (Episodic Reasoning: tvqa frames at 3 fps)

Frames as the official evaluation reads them: the whole video at 2 fps, at most 16 frames
(`pixelqa.frame_sampling.fps_indices`; frame folders count as 3 fps); the tasks' start / end bounds are kept
in meta but not applied, as in the official run. meta: task type (e.g. "Action Sequence"), the question;
`answer` = option letter, `choices` = candidates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.schema import Media, Sample, Turn, make_key
from pixelqa.data.sources._frame_order import frame_files
from pixelqa.data.sources._image_files import cached_json
from pixelqa.data.sources.video_io import encode_video_frames, read_frame_files, video_info
from pixelqa.data.sources.videorefer import mcq_text
from pixelqa.frame_sampling import fps_indices

# (task type, json file, video prefix, kind, bounded by start/end) - the MVBench task table.
TASKS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("Action Sequence", "action_sequence.json", "star/Charades_v1_480", "video", True),
    ("Action Prediction", "action_prediction.json", "star/Charades_v1_480", "video", True),
    ("Action Antonym", "action_antonym.json", "ssv2_video", "video", False),
    ("Fine-grained Action", "fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    ("Unexpected Action", "unexpected_action.json", "FunQA_test/test", "video", False),
    ("Object Existence", "object_existence.json", "clevrer/video_validation", "video", False),
    ("Object Interaction", "object_interaction.json", "star/Charades_v1_480", "video", True),
    ("Object Shuffle", "object_shuffle.json", "perception/videos", "video", False),
    ("Moving Direction", "moving_direction.json", "clevrer/video_validation", "video", False),
    ("Action Localization", "action_localization.json", "sta/sta_video", "video", True),
    ("Scene Transition", "scene_transition.json", "scene_qa/video", "video", False),
    ("Action Count", "action_count.json", "perception/videos", "video", False),
    ("Moving Count", "moving_count.json", "clevrer/video_validation", "video", False),
    ("Moving Attribute", "moving_attribute.json", "clevrer/video_validation", "video", False),
    ("State Change", "state_change.json", "perception/videos", "video", False),
    ("Fine-grained Pose", "fine_grained_pose.json", "nturgbd", "video", False),
    ("Character Order", "character_order.json", "perception/videos", "video", False),
    ("Egocentric Navigation", "egocentric_navigation.json", "vlnqa", "video", False),
    ("Episodic Reasoning", "episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    ("Counterfactual Inference", "counterfactual_inference.json", "clevrer/video_validation", "video", False),
)
FRAME_FOLDER_FPS = 3.0  # tvqa frames_fps3_hq
SAMPLE_FPS = 2.0  # the official reader's rate (Qwen2.5-VL's video reader at fps 2)
LETTERS = "ABCDEFGH"


@register_source("mvbench")
class MVBench(Source):
    """One sample per question; items are (task index, entry index)."""

    splits = ("test",)
    task = "mcq"
    num_frames = 16  # at most, at SAMPLE_FPS over the whole video

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The 20 task JSONs."""
        self.check_split(split)
        files = [Path(root) / "json" / t[1] for t in TASKS]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"mvbench: missing task files {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        return files

    def items(self, root: Path, split: str) -> Sequence[tuple[int, int]]:
        """(task index, entry index) over all tasks in table order."""
        out = []
        for ti, f in enumerate(self.raw_files(root, split)):
            data = cached_json(str(f))
            if not isinstance(data, list):
                raise TypeError(f"{f}: got {type(data).__name__}, expected a list of questions")
            out += [(ti, ei) for ei in range(len(data))]
        return out

    def convert(self, root: Path, split: str, item: tuple[int, int]) -> Iterator[Sample]:
        """One MCQ sample."""
        root = Path(root)
        task_type, file, prefix, kind, bound = TASKS[item[0]]
        e = cached_json(str(root / "json" / file))[item[1]]
        where = f"{file}[{item[1]}]"
        for k in ("video", "question", "candidates", "answer"):
            if not isinstance(e, dict) or k not in e:
                raise ValueError(f"{where}: missing {k!r}")
        cands = [str(c) for c in e["candidates"]]
        if str(e["answer"]) not in cands:
            raise ValueError(f"{where}.answer: got {e['answer']!r}, expected one of the candidates {cands}")
        letter = LETTERS[cands.index(str(e["answer"]))]
        start, end = (e.get("start"), e.get("end")) if bound else (None, None)
        path = root / "video" / prefix / str(e["video"])
        if kind == "frame" or path.is_dir():
            if not path.is_dir():
                raise FileNotFoundError(f"{where}: frame folder not found: {path}")
            files = frame_files(path)  # by frame number (frame_2 before frame_10), hidden files skipped
            if not files:
                raise FileNotFoundError(f"{where}: no frames in {path}")
            ids = fps_indices(len(files), FRAME_FOLDER_FPS, SAMPLE_FPS, self.num_frames)
            fs = read_frame_files([str(files[i]) for i in ids])
        else:
            total, fps, _ = video_info(str(path))
            if total < 1:
                raise ValueError(f"{where}: video {path} has no decodable frames")
            ids = fps_indices(total, fps if fps > 0 else 1.0, SAMPLE_FPS, self.num_frames)
            fs = encode_video_frames(str(path), ids)
        question = " ".join(str(e["question"]).split())
        yield Sample(
            key=make_key(file.removesuffix(".json"), item[1]),
            source=self.name,
            split=split,
            task=self.task,
            media=Media("video" if len(fs.frames) > 1 else "image", fs.frames, fs.size, fs.ext, None, ids),
            turns=[Turn("user", mcq_text(question, LETTERS[: len(cands)], cands)), Turn("assistant", letter)],
            answer=letter,
            choices=cands,
            meta={
                "task_type": task_type,
                "question": question,
                "answer_text": str(e["answer"]),
                "video": str(e["video"]),
                "bound": [start, end] if bound else None,
            },
        )
