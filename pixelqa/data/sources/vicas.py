"""ViCaS (Athar et al., CVPR 2025): videos with captions and language-guided video instance segmentation
(LG-VIS); we use the LG-VIS referrals.

Raw layout (the HuggingFace release + decoded frames)::

    <root>/annotations/<version>/<video id>.json   {"filename", "segmentations": [{"filename": <frame file>,
                                                    "is_gt": bool, "track_ids": [..], "mask_rles": [RLE ..]}],
                                                    "object_referrals": [{"prompt", "track_ids": [..]}],
                                                    "caption_parsed_en_gpt", ...}
    <root>/splits/<version>/{train,val,test}.json  list of video ids
    <root>/video_frames/<video id>/<frame file>

Frames are the annotated frames listed in "segmentations", in frame-number order (the list order of the JSON is
not trusted; the ViCaS evaluation sorts them too); each referral is one sample whose target is the union of its
tracks. <version> is the newest of VERSIONS present.

`is_gt` marks each "segmentations" entry: true for the human-annotated masks (about 1 fps), false for the masks SAM 2
propagated between them (`vicas/dataset.py` of the ViCaS release: `include_auto_annotated_masks`; its LG-VIS
evaluation scores the `is_gt` frames only). UniPixel's loader reads every entry and never the flag, so `vicas` keeps
every annotated frame, as released. `vicas_gt` is the switch that honours it: the same referrals on the `is_gt` frames
only (a train referral naming a track without a human mask is a counted reject, as one naming an unknown track; an
entry whose `is_gt` is not true or false, or a video without an `is_gt` frame, is one reject per referral). Each is
its own source, so their shards and manifests never mix.

Nothing leaves silently: a train referral naming a track that no "segmentations" entry holds is a counted reject
naming the file, the referral and the track ids the video does hold (its target would be empty on every frame;
val / test keep it so, as the release scores it); damage to
the whole video (no or malformed "segmentations", unreadable frames, a mask of another size) is one reject per
referral. A referral with ``track_ids: []`` names no object: in train it is counted as skipped (nothing to
segment; the reference lists no ViCaS filter, and the training recipes drop no-object expressions, §4.7 ReVOS),
in val / test it is kept with an empty target (`no_target`), as the benchmark scores every referral.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected, skipped
from pixelqa.data.schema import Sample, make_key
from pixelqa.data.sources._frame_order import frame_number
from pixelqa.data.sources._image_files import cached_json
from pixelqa.data.sources._image_files import read_json as load_json
from pixelqa.data.sources.video_io import FrameSet, read_frame_files
from pixelqa.data.sources.vos import Expression, rvos_sample

VERSIONS = ("v1.0", "v0.1")


@register_source("vicas")
class ViCaS(Source):
    """One sample per object referral."""

    splits = ("train", "val", "test")
    task = "rvos"
    only_is_gt = False  # released: every "segmentations" entry, human-annotated or propagated (vicas_gt: True)

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
        """All referrals of one video; a bad referral, or damage to the video, is a counted reject per referral."""
        root = Path(root)
        ann_path = root / "annotations" / self.version(root) / f"{item}.json"
        ann = load_json(ann_path)
        refs = ann.get("object_referrals") if isinstance(ann, dict) else None
        if not isinstance(refs, list):
            raise ValueError(f"{ann_path}: expected an 'object_referrals' list")
        vid = item  # frame folders are named by the zero-padded video id, like the annotation files
        try:
            names, frames, tracks_on = self.video(root, vid, ann.get("segmentations"))
            problem = None
        except (OSError, ValueError, TypeError, KeyError) as e:
            problem = f"{type(e).__name__}: {e}"
        for i, ref in enumerate(refs):
            where = f"{ann_path}: object_referrals[{i}]"
            key = make_key(vid, str(i))
            tracks = ref.get("track_ids") if isinstance(ref, dict) else None
            if not isinstance(tracks, list) or "prompt" not in ref:
                # One bad referral is its own counted reject: the video's other referrals are still converted.
                reason = f"{where}: got {ref!r:.80}, expected 'prompt' and a 'track_ids' list"
                yield rejected(self.name, split, self.task, key, reason)
                continue
            if not tracks and split == "train":
                reason = f"{where}: track_ids [] names no object, nothing to segment"
                yield skipped(self.name, split, self.task, key, reason)
                continue
            if problem is not None:
                yield rejected(self.name, split, self.task, key, f"{where}: {problem}")
                continue
            shown = {tr for per in tracks_on for tr in per}
            try:
                absent = [tr for tr in tracks if tr not in shown]
            except TypeError:
                absent = list(tracks)  # an unhashable id is no track id
            if absent and split == "train":  # val / test keep it empty, as the benchmark scores every referral
                kept = " with is_gt true" if self.only_is_gt else ""
                reason = (
                    f"{where}: track_ids {tracks} name {absent} in no 'segmentations' entry{kept} of the video "
                    f"(track ids there: {id_list(shown)}), expected tracks segmented on some frame"
                )
                yield rejected(self.name, split, self.task, key, reason)
                continue
            h, w = frames.size
            target = {}
            for t, per in enumerate(tracks_on):
                present = [per[tr] for tr in tracks if tr in per]
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
                where=where,
                family="sentence",  # the released family: the referral prompt is a full sentence
            )

    def video(self, root: Path, vid: str, segs: Any) -> tuple[list[str], FrameSet, list[dict[Any, dict]]]:
        """(frame names in frame-number order, their frames, per frame {track id: RLE}) of one video; raises naming
        the entry (the caller's messages name the file) when its "segmentations" are unusable."""
        if not isinstance(segs, list) or not segs or not all(isinstance(s, dict) for s in segs):
            raise ValueError(f"'segmentations': got {segs!r:.80}, expected a non-empty list of frame dicts")
        # by frame number, then name: the JSON's list order is not a promise of time order
        order = sorted(
            self.kept_entries(segs), key=lambda j: (frame_number(str(segs[j]["filename"])), str(segs[j]["filename"]))
        )
        names = [str(segs[j]["filename"]) for j in order]
        frames = read_frame_files([str(root / "video_frames" / vid / n) for n in names])
        h, w = frames.size
        tracks_on = []
        for j in order:
            ids, rles = segs[j].get("track_ids", []), segs[j].get("mask_rles", [])
            if not isinstance(ids, list) or not isinstance(rles, list) or len(ids) != len(rles):
                raise ValueError(
                    f"segmentations[{j}]: got track_ids {ids!r:.40} and mask_rles of "
                    f"{len(rles) if isinstance(rles, list) else type(rles).__name__}, expected one RLE per track"
                )
            per = {}
            for tr, rle in zip(ids, rles):
                rle = masks.normalize(rle)
                if list(rle["size"]) != [h, w]:
                    raise ValueError(
                        f"segmentations[{j}] ({segs[j]['filename']}) track {tr}: RLE size "
                        f"{rle['size']}, expected the frame size {[h, w]}"
                    )
                per[tr] = rle
            tracks_on.append(per)
        return names, frames, tracks_on

    def kept_entries(self, segs: list[dict]) -> list[int]:
        """Positions of the "segmentations" entries whose frames the samples keep: all (released), or with
        `only_is_gt` those whose `is_gt` is true; raises naming the entry when a flag is neither true nor false."""
        if not self.only_is_gt:
            return list(range(len(segs)))
        kept = []
        for j, seg in enumerate(segs):
            flag = seg.get("is_gt")
            # JSON true / false; 0 / 1 read the same (bool is an int)
            if not isinstance(flag, int) or flag not in (0, 1):
                raise ValueError(
                    f"segmentations[{j}] ({seg.get('filename')}): is_gt got {flag!r:.40}, expected true or false"
                )
            if flag:
                kept.append(j)
        if not kept:
            raise ValueError(
                f"'segmentations': none of its {len(segs)} entries has is_gt true, expected a human-annotated frame"
            )
        return kept


@register_source("vicas_gt")
class ViCaSGroundTruthFrames(ViCaS):
    """`vicas` on the human-annotated frames only (`is_gt`; the frames ViCaS's LG-VIS evaluation scores), without the
    masks SAM 2 propagated between them: not UniPixel's released data, which reads every entry."""

    only_is_gt = True


def id_list(ids: set) -> list:
    """Track ids sorted for a message: numerically when they are all numbers, else as text."""
    try:
        return sorted(ids)
    except TypeError:  # mixed types in damaged data
        return sorted(ids, key=str)
