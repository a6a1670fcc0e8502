"""ViCaS (Athar et al., CVPR 2025): videos with captions and language-guided video instance segmentation
(LG-VIS); we use the LG-VIS referrals.

Raw layout (the HuggingFace release + decoded frames)::

    <root>/annotations/<version>/<video id>.json   {"filename", "segmentations": [{"filename": <frame file>,
                                                    "track_ids": [..], "mask_rles": [RLE ..]}],
                                                    "object_referrals": [{"prompt", "track_ids": [..]}],
                                                    "caption_parsed_en_gpt", ...}
    <root>/splits/<version>/{train,val,test}.json  list of video ids
    <root>/video_frames/<video id>/<frame file>

Frames are the annotated frames listed in "segmentations"; each referral is one sample whose target is the
union of its tracks. <version> is the newest of VERSIONS present.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected
from pixelqa.data.schema import Sample, make_key
from pixelqa.data.sources._image_files import cached_json
from pixelqa.data.sources._image_files import read_json as load_json
from pixelqa.data.sources.video_io import read_frame_files
from pixelqa.data.sources.vos import Expression, rvos_sample

VERSIONS = ("v1.0", "v0.1")


@register_source("vicas")
class ViCaS(Source):
    """One sample per object referral."""

    splits = ("train", "val", "test")
    task = "rvos"

    def version(self, root: Path) -> str:
        """The newest annotation version present."""
        for v in VERSIONS:
            if (Path(root) / "splits" / v).is_dir():
                return v
        raise FileNotFoundError(f"vicas: expected {Path(root) / 'splits'}/<version> with one of {list(VERSIONS)}")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The split list."""
        self.check_split(split)
        p = Path(root) / "splits" / self.version(root) / f"{split}.json"
        if not p.is_file():
            raise FileNotFoundError(f"vicas {split}: expected {p}")
        return [p]

    def items(self, root: Path, split: str) -> Sequence[str]:
        """Video ids of the split, zero-padded to 6 digits like the annotation file names."""
        (p,) = self.raw_files(root, split)
        ids = cached_json(str(p))
        if not isinstance(ids, list):
            raise TypeError(f"{p}: got {type(ids).__name__}, expected a list of video ids")
        return [str(i).zfill(6) for i in ids]

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """All referrals of one video."""
        root = Path(root)
        ann_path = root / "annotations" / self.version(root) / f"{item}.json"
        ann = load_json(ann_path)
        segs = ann.get("segmentations") if isinstance(ann, dict) else None
        refs = ann.get("object_referrals") if isinstance(ann, dict) else None
        if not isinstance(segs, list) or not segs or not isinstance(refs, list):
            raise ValueError(f"{ann_path}: expected non-empty 'segmentations' and an 'object_referrals' list")
        vid = item  # frame folders are named by the zero-padded video id, like the annotation files
        names = [str(s["filename"]) for s in segs]
        frames = read_frame_files([str(root / "video_frames" / vid / n) for n in names])
        h, w = frames.size
        for i, ref in enumerate(refs):
            tracks = ref.get("track_ids") if isinstance(ref, dict) else None
            if not isinstance(tracks, list) or "prompt" not in ref:
                # One bad referral is its own counted reject: the video's other referrals are still converted.
                reason = f"{ann_path}: object_referrals[{i}]: got {ref!r:.80}, expected 'prompt' and a 'track_ids' list"
                yield rejected(self.name, split, self.task, make_key(vid, str(i)), reason)
                continue
            target = {}
            for t, s in enumerate(segs):
                ids, rles = s.get("track_ids", []), s.get("mask_rles", [])
                if len(ids) != len(rles):
                    raise ValueError(
                        f"{ann_path}: segmentations[{t}] has {len(ids)} track_ids and {len(rles)} mask_rles"
                    )
                present = [masks.normalize(rles[ids.index(tr)]) for tr in tracks if tr in ids]
                target[t] = masks.merge(present) if present else masks.empty(h, w)
            exp = Expression(str(i), str(ref["prompt"]).strip(), list(tracks), [], ref)
            meta = {"has_masks": True, "no_target": not tracks, "caption": ann.get("caption_parsed_en_gpt")}
            yield rvos_sample(
                source=self.name,
                split=split,
                task=self.task,
                vid=vid,
                exp=exp,
                frames=frames,
                frame_ids=names,
                target_masks=target,
                meta=meta,
                where=f"{ann_path}: object_referrals[{i}]",
                family="sentence",  # the released family: the referral prompt is a full sentence
            )
