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
subsampled uniformly (frame_ids keep the source frame numbers). Masklet row k is video frame 4k, one to one (the
reference's `load_frames_with_stride` + `sav` masks): a masklet with more rows than the video has strided frames
(a truncated or short mp4, or the masklet of another video) is a counted reject of each described object, naming
the video, the masklet and the decodable frame count, found by decoding (not from the container's frame-count
estimate). Other damage to the video (a missing file, an empty masklet) is likewise one reject per object.
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
from pixelqa.data.sources.video_io import FrameSet, encode_video_frames, uniform_indices, video_info
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
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objects, dict):
            raise ValueError(f"{path}: entry {item!r}: got {entry!r:.80}, expected a mapping with an 'objects' mapping")
        try:
            anno_path, masklet, keep, frames = self.load(root, path, item, entry)
            problem = None
        except (OSError, ValueError, TypeError) as e:
            # damage to the video: each described object is rejected with it (one count per lost sample)
            problem = f"{type(e).__name__}: {e}"
        for obj_key, obj in objects.items():
            where = f"{path}: {item}.objects[{obj_key!r}]"
            if problem is not None:
                yield rejected(self.name, split, self.task, make_key(item, str(obj_key)), f"{where}: {problem}")
                continue
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

    def load(self, root: Path, path: Path, item: str, entry: dict) -> tuple[Path, list, list[int], FrameSet]:
        """(masklet file, masklet, kept masklet rows, their video frames) of one train video; raises naming the file
        when the video cannot be paired with its masklet."""
        for k in ("video_path", "anno_path"):
            if k not in entry:
                raise ValueError(f"{path}: entry {item!r} has no {k!r}, expected video_path, anno_path and objects")
        video = self.resolve(root, entry["video_path"], "video")
        anno_path = self.resolve(root, entry["anno_path"], "masklet file")
        anno = load_json(anno_path)
        masklet = anno.get("masklet") if isinstance(anno, dict) else None
        if not isinstance(masklet, list) or not masklet:
            raise ValueError(f"{anno_path}: 'masklet' missing or empty, expected [annotated frame][object] RLEs")
        keep = uniform_indices(len(masklet), self.max_frames)  # positions in the annotated-frame list
        wanted = [k * SAV_STRIDE for k in keep]
        last = (len(masklet) - 1) * SAV_STRIDE
        try:
            # the last row's frame too, decoded rather than taken from the container's frame-count estimate: a video
            # that ends before it cannot be paired with this masklet row for row
            frames = encode_video_frames(str(video), wanted + ([last] if wanted[-1] != last else []))
        except ValueError as e:
            n_video = video_info(str(video))[0]  # the container's estimate, only to say how short the video is
            raise ValueError(
                f"{anno_path}: {len(masklet)} masklet rows need video frames 0, {SAV_STRIDE}, ..., {last}, but {e} "
                f"(the container reports {n_video} frames); expected one row per {SAV_STRIDE} frames of the video "
                "(a truncated video, or another video's masklet)"
            ) from None
        frames.frames = frames.frames[: len(wanted)]
        # fps of the annotated frames, when all of them are kept (irregular after subsampling)
        frames.fps = frames.fps / SAV_STRIDE if frames.fps and len(keep) == len(masklet) else None
        return anno_path, masklet, keep, frames

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
