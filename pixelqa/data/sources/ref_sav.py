"""Ref-SAV (Sa2VA, 2025): referring expressions for SA-V manual masklets.

Raw layout::

    train (the Sa2VA release as UniPixel reads it)
    <root>/Ref-SAV.json (or Ref-SAV-Min-Ratio-0.3.json)   {vid: {"video_path": "<any>/sav_train/sav_000/<vid>.mp4",
                                                            "anno_path": "<any>/sav_train/sav_000/<vid>_manual.json",
                                                            "objects": {obj: {"video_id", "obj_id", "formated"}}}}
    <root>/sav/sav_train/sav_000/<vid>.mp4                 SA-V videos (24 fps)
    <root>/sav/sav_train/sav_000/<vid>_manual.json         SA-V masklets: "masklet"[annotated frame][object] = RLE,
                                                            annotated every 4th video frame (6 fps)
    valid (MeViS style)
    <root>/valid/meta_expressions_valid.json, <root>/valid/mask_dict.json, <root>/valid/videos/<vid>/<frame>.jpg

In train the first component of video_path / anno_path is dropped and the rest resolved under <root>/sav
(or under <root> as given). Only annotated frames are kept; videos with more than `max_frames` of them are
subsampled uniformly (frame_ids keep the source frame numbers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source, rejected
from pixelqa.data.schema import Sample, make_key
from pixelqa.data.sources._image_files import cached_json, first_existing
from pixelqa.data.sources._image_files import read_json as load_json
from pixelqa.data.sources.video_io import encode_video_frames, uniform_indices, video_info
from pixelqa.data.sources.vos import Expression, MaskDictVOS, rvos_sample

TRAIN_JSONS = ("Ref-SAV.json", "Ref-SAV-Min-Ratio-0.3.json")
SAV_STRIDE = 4  # SA-V annotates every 4th frame of its 24 fps videos


@register_source("ref_sav")
class RefSAV(MaskDictVOS, Source):
    """Ref-SAV: one sample per described object."""

    splits = ("train", "valid")
    task = "rvos"
    family = "description"  # the released instruction family of Ref-SAV (its long descriptions)
    max_frames = 32

    def paths(self, root: Path, split: str) -> tuple[Path, Path | None, Path]:
        """valid: (meta JSON, mask dict, frame root)."""
        meta = root / "valid" / "meta_expressions_valid.json"
        mask = root / "valid" / "mask_dict.json"
        for p in (meta, mask):
            if not p.is_file():
                raise FileNotFoundError(f"ref_sav valid: expected {p}")
        return meta, mask, root / "valid" / "videos"

    def train_json(self, root: Path) -> Path:
        """The Ref-SAV train expressions file."""
        return first_existing([root / n for n in TRAIN_JSONS], "ref_sav train expressions")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The expressions JSON (train) or meta + mask dict (valid)."""
        self.check_split(split)
        return [self.train_json(Path(root))] if split == "train" else super().raw_files(root, split)

    def items(self, root: Path, split: str) -> Sequence[str]:
        """Video ids in file order."""
        self.check_split(split)
        if split != "train":
            return super().items(root, split)
        path = self.train_json(Path(root))
        data = cached_json(str(path))
        if not isinstance(data, dict):
            raise TypeError(f"{path}: got {type(data).__name__}, expected a mapping video id -> entry")
        return list(data)

    def resolve(self, root: Path, rel: str, what: str) -> Path:
        """A path of the Ref-SAV JSON, resolved under <root>/sav (first component dropped) or <root>."""
        parts = rel.replace("\\", "/").split("/", 1)
        cands = [root / "sav" / parts[1]] if len(parts) == 2 else []
        cands += [root / rel]
        return first_existing(cands, f"ref_sav {what} {rel!r}")

    def convert(self, root: Path, split: str, item: str) -> Iterator[Sample]:
        """All described objects of one video."""
        root = Path(root)
        if split != "train":
            yield from super().convert(root, split, item)
            return
        path = self.train_json(root)
        entry = cached_json(str(path)).get(item)
        for k in ("video_path", "anno_path", "objects"):
            if not isinstance(entry, dict) or k not in entry:
                raise ValueError(f"{path}: entry {item!r} has no {k!r}, expected video_path, anno_path and objects")
        video = self.resolve(root, entry["video_path"], "video")
        anno_path = self.resolve(root, entry["anno_path"], "masklet file")
        anno = load_json(anno_path)
        masklet = anno.get("masklet") if isinstance(anno, dict) else None
        if not isinstance(masklet, list) or not masklet:
            raise ValueError(f"{anno_path}: 'masklet' missing or empty, expected [annotated frame][object] RLEs")
        n_video, fps, _ = video_info(str(video))
        n_ann = min(len(masklet), (n_video + SAV_STRIDE - 1) // SAV_STRIDE) if n_video > 0 else len(masklet)
        keep = uniform_indices(n_ann, self.max_frames)  # positions in the annotated-frame list
        frames = encode_video_frames(str(video), [k * SAV_STRIDE for k in keep])
        if len(keep) == n_ann and fps > 0:
            frames.fps = fps / SAV_STRIDE
        else:
            frames.fps = None  # irregular after subsampling
        for obj_key, obj in entry["objects"].items():
            where = f"{path}: {item}.objects[{obj_key!r}]"
            try:
                target = self.object_masks(obj, obj_key, masklet, keep, frames.size, anno_path)
            except (ValueError, TypeError) as e:
                # One bad object is its own counted reject: the video's other objects are still converted.
                yield rejected(self.name, split, self.task, make_key(item, str(obj_key)), f"{where}: {e}")
                continue
            idx = int(obj.get("obj_id", obj_key))
            exp = Expression(str(obj_key), str(obj["formated"]).strip(), [idx], [], obj)
            meta = {"has_masks": True, "no_target": False, "source_frames": [k * SAV_STRIDE for k in keep]}
            yield rvos_sample(
                source=self.name,
                split=split,
                task=self.task,
                vid=item,
                exp=exp,
                frames=frames,
                frame_ids=[str(k * SAV_STRIDE) for k in keep],
                target_masks=target,
                meta=meta,
                where=where,
                family=self.family,
            )

    def object_masks(
        self, obj: Any, obj_key: str, masklet: list, keep: Sequence[int], size: tuple[int, int], anno_path: Path
    ) -> dict[int, dict]:
        """One described object's masks on the kept annotated frames (its index in each masklet row)."""
        if not isinstance(obj, dict) or "formated" not in obj:
            raise ValueError(f"got {obj!r:.80}, expected a dict with a 'formated' description")
        idx = int(obj.get("obj_id", obj_key))
        target = {}
        for t, k in enumerate(keep):
            row = masklet[k]
            if idx >= len(row):
                raise ValueError(f"{anno_path}: masklet[{k}] has {len(row)} objects, expected index {idx}")
            rle = masks.normalize(row[idx])
            if list(rle["size"]) != list(size):
                raise ValueError(f"{anno_path}: masklet[{k}][{idx}] size {rle['size']}, expected {list(size)}")
            target[t] = rle
        return target
