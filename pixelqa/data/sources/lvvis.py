"""LV-VIS (Wang et al., ICCV 2023) as a referring source: category names as expressions.

Raw layout, either of:

- the VISA re-pack of LV-VIS train that VISA and UniPixel use (MeViS style)::

    <root>/train/meta_expressions.json   (or <root>/meta_expressions.json)  expressions are class names
                                         with underscores, e.g. "sewing_machine"; obj_id / anno_id lists
    <root>/train/mask_dict.json          (or <root>/mask_dict.json)         {anno_id: [RLE or null per frame]}
    <root>/train/JPEGImages/<vid>/<frame>.jpg

- the LV-VIS release (YouTube-VIS format), read when no re-pack is present::

    <root>/train_instances.json          {"videos": [{"id", "file_names": ["<vid>/<frame>.jpg", ..], "height",
                                          "width"}], "annotations": [{"video_id", "category_id",
                                          "segmentations": [RLE or null per frame]}], "categories": [{"id", "name"}]}
    <root>/train/JPEGImages/<file_names>

Each (video, class) is one sample whose target is the union of all the class's instances.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.schema import Sample
from pixelqa.data.sources._image_files import cached_json, first_existing
from pixelqa.data.sources.video_io import read_frame_files
from pixelqa.data.sources.vos import Expression, MaskDictVOS, rvos_sample, union_rles

RELEASE_FILE = "train_instances.json"


@register_source("lvvis")
class LVVIS(MaskDictVOS, Source):
    """LV-VIS class-name expressions, one sample per (video, class)."""

    splits = ("train",)
    task = "rvos"

    def repack(self, root: Path, split: str) -> tuple[Path, Path] | None:
        """(meta JSON, mask dict) of the VISA re-pack, or None when it is absent."""
        metas = [root / split / "meta_expressions.json", root / "meta_expressions.json"]
        dicts = [root / split / "mask_dict.json", root / "mask_dict.json"]
        meta = next((p for p in metas if p.is_file()), None)
        mask = next((p for p in dicts if p.is_file()), None)
        return (meta, mask) if meta is not None and mask is not None else None

    def paths(self, root: Path, split: str) -> tuple[Path, Path | None, Path]:
        """(meta JSON, mask dict, frame root) of the re-pack."""
        found = self.repack(root, split)
        if found is None:
            raise FileNotFoundError(f"lvvis: expected {root / split / 'meta_expressions.json'} + mask_dict.json")
        return found[0], found[1], root / split / "JPEGImages"

    def release(self, root: Path) -> Path:
        """The YouTube-VIS style annotation file of the release."""
        return first_existing([root / RELEASE_FILE, root / "train" / RELEASE_FILE], "lvvis annotations")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """Re-pack meta + mask dict, or the release's instances JSON."""
        self.check_split(split)
        found = self.repack(Path(root), split)
        return list(found) if found is not None else [self.release(Path(root))]

    def items(self, root: Path, split: str) -> Sequence:
        """Video ids (re-pack) or video indices of the release."""
        self.check_split(split)
        if self.repack(Path(root), split) is not None:
            return super().items(root, split)
        data = cached_json(str(self.release(Path(root))))
        if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
            raise TypeError(f"{self.release(Path(root))}: expected a YouTube-VIS JSON with a 'videos' list")
        return range(len(data["videos"]))

    def convert(self, root: Path, split: str, item: str | int) -> Iterator[Sample]:
        """The class samples of one video."""
        root = Path(root)
        if self.repack(root, split) is not None:
            yield from super().convert(root, split, item)
            return
        path = self.release(root)
        data = cached_json(str(path))
        video = data["videos"][int(item)]
        names = video.get("file_names") or video.get("frames")
        if not isinstance(names, list) or not names:
            raise ValueError(f"{path}: videos[{item}] has no 'file_names' list")
        frames = read_frame_files([str(root / split / "JPEGImages" / n) for n in names])
        cats = {c["id"]: c["name"] for c in data.get("categories", [])}
        by_cat: dict[int, list] = defaultdict(list)
        for a in _annotations_by_video(str(path)).get(video["id"], []):
            by_cat[a["category_id"]].append(a)
        for cat in sorted(by_cat):
            anns = by_cat[cat]
            if cat not in cats:
                raise ValueError(f"{path}: category_id {cat} of video {video['id']} is not in 'categories'")
            target = union_rles(
                [a["segmentations"] for a in anns], len(names), frames.size, f"{path}[video {video['id']}]"
            )
            vid = str(names[0]).split("/")[0]
            exp = Expression(str(cat), cats[cat].replace("_", " "), [a.get("id") for a in anns], [], {})
            meta = {"has_masks": True, "no_target": False, "category": cats[cat]}
            yield rvos_sample(
                source=self.name,
                split=split,
                task=self.task,
                vid=vid,
                exp=exp,
                frames=frames,
                frame_ids=[str(n) for n in names],
                target_masks=target,
                meta=meta,
            )

    def expression_text(self, exp: Expression) -> str:
        """Class names use underscores for spaces."""
        return exp.text.replace("_", " ").strip()

    def extra_meta(self, root: Path, split: str, vid: str, video: dict, exp: Expression) -> dict:
        """The raw class name."""
        return {"category": exp.text}


_INDEX: dict[str, dict] = {}


def _annotations_by_video(path: str) -> dict:
    """Annotations grouped by video id (built once per process and file)."""
    if path not in _INDEX:
        grouped: dict = defaultdict(list)
        for a in cached_json(path).get("annotations", []):
            grouped[a["video_id"]].append(a)
        _INDEX.clear()
        _INDEX[path] = grouped
    return _INDEX[path]
