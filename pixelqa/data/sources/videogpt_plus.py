"""VideoGPT+ instruction data (Maaz et al., 2024): general video conversations in the LLaVA format.

Raw layout, either of::

    <root>/instruction_tuning/*.json                       the VideoGPT+ release, one JSON per sub-set
    <root>/llava_v1_5_mix665k_with_videogpt_plus_576k.json UniPixel's merged file (image / text entries skipped:
                                                           LLaVA-1.5-Mix-665K is its own source)
    entries: [{"id", "video": <path>, "conversations": [{"from": "human", "value": "<video>\\n..."},
               {"from": "gpt", "value": ...}, ...]}]
    <root>/videos/<path> (or <root>/<path>)                mp4 / mkv / webm / avi, or a folder of frames

Frames: sampled at 2 fps (as the reference recipe), at most `max_frames`, at least 2, spread evenly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.schema import Media, Sample, Turn, make_key
from pixelqa.data.sources._frame_order import frame_files
from pixelqa.data.sources._image_files import cached_json
from pixelqa.data.sources.video_io import encode_video_frames, read_frame_files, uniform_indices, video_info
from pixelqa.data.sources.videorefer import resolve_video, strip_video_tag

MERGED = "llava_v1_5_mix665k_with_videogpt_plus_576k.json"
SAMPLE_FPS = 2.0


def sampled_frames(
    video: Path, max_frames: int, fps: float = SAMPLE_FPS
) -> tuple[list[bytes], str, tuple[int, int], list[int], float | None]:
    """(encoded frames, ext, size, source frame indices, effective fps) of a video file or frame folder."""
    if video.is_dir():
        files = frame_files(video)  # by frame number (frame_2 before frame_10), hidden files skipped
        if not files:
            raise FileNotFoundError(f"frame folder {video} has no .jpg/.png frames")
        ids = uniform_indices(len(files), max_frames)
        fs = read_frame_files([str(files[i]) for i in ids])
        return fs.frames, fs.ext, fs.size, ids, None
    total, vfps, _ = video_info(str(video))
    if total < 1:
        raise ValueError(f"video {video}: OpenCV reports {total} frames, expected a decodable video")
    want = int(total / vfps * fps) if vfps > 0 else max_frames
    ids = uniform_indices(total, max(2, min(max_frames, want)))
    fs = encode_video_frames(str(video), ids)
    eff = len(ids) / (total / vfps) if vfps > 0 else None
    return fs.frames, fs.ext, fs.size, ids, eff


@register_source("videogpt_plus")
class VideoGPTPlus(Source):
    """One sample per video conversation."""

    splits = ("train",)
    task = "video_qa"
    max_frames = 16

    def files(self, root: Path) -> list[Path]:
        """The annotation JSONs: the release's instruction_tuning/*.json, else UniPixel's merged file."""
        root = Path(root)
        files = sorted((root / "instruction_tuning").glob("*.json"))
        if not files and (root / MERGED).is_file():
            files = [root / MERGED]
        if not files:
            raise FileNotFoundError(f"videogpt_plus: expected {root / 'instruction_tuning'}/*.json or {root / MERGED}")
        return files

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The annotation JSONs."""
        self.check_split(split)
        return self.files(root)

    def items(self, root: Path, split: str) -> Sequence[tuple[int, int]]:
        """(file index, entry index) of every entry with a video."""
        self.check_split(split)
        out = []
        for fi, f in enumerate(self.files(root)):
            data = cached_json(str(f))
            if not isinstance(data, list):
                raise TypeError(f"{f}: got {type(data).__name__}, expected a list of conversations")
            out += [(fi, ei) for ei, e in enumerate(data) if isinstance(e, dict) and "video" in e]
        return out

    def convert(self, root: Path, split: str, item: tuple[int, int]) -> Iterator[Sample]:
        """The conversation of one entry."""
        root = Path(root)
        f = self.files(root)[item[0]]
        e = cached_json(str(f))[item[1]]
        where = f"{f.name}[{item[1]}]"
        conv = e.get("conversations")
        if not isinstance(conv, list) or len(conv) < 2:
            raise ValueError(f"{where}.conversations: got {conv!r:.80}, expected alternating human / gpt turns")
        turns = []
        for i, c in enumerate(conv):
            role = {"human": "user", "gpt": "assistant"}.get(c.get("from") if isinstance(c, dict) else None)
            if role != ("user", "assistant")[i % 2]:
                raise ValueError(
                    f"{where}.conversations[{i}].from: got {c!r:.60}, expected 'human' / 'gpt' alternating"
                )
            text = strip_video_tag(str(c.get("value", ""))) if i == 0 else str(c.get("value", "")).strip()
            turns.append(Turn(role, text))
        if len(turns) % 2:
            turns = turns[:-1]  # a trailing question without answer teaches nothing
        video = resolve_video([root / "videos" / e["video"], root / e["video"]])
        frames, ext, size, ids, fps = sampled_frames(video, self.max_frames)
        yield Sample(
            key=make_key(f.stem, e.get("id", item[1]), item[1]),
            source=self.name,
            split=split,
            task=self.task,
            media=Media("video" if len(frames) > 1 else "image", frames, size, ext, fps, ids),
            turns=turns,
            answer=turns[-1].text,
            meta={"id": str(e.get("id", "")), "file": f.name, "video": e["video"]},
        )
