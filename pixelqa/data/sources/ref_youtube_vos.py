"""Ref-YouTube-VOS (Seo et al., ECCV 2020): referring video object segmentation on YouTube-VOS videos.

Raw layout (the competition release, as ReferFormer and UniPixel arrange it)::

    <root>/meta_expressions/{train,valid}/meta_expressions.json   {"videos": {vid: {"expressions": {id: {"exp",
                                                                    "obj_id"}}, "frames": [names]}}}
    <root>/{train,valid}/JPEGImages/<vid>/<frame>.jpg
    <root>/train/Annotations/<vid>/<frame>.png                    palette PNG, pixel value = object id
    <root>/mask_dict.pkl                                          (UniPixel-SFT-1M re-pack, instead of the PNGs)

valid has no public masks (scored on the challenge server): its samples carry an unannotated target.
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.sources.vos import PaletteVOS


@register_source("ref_youtube_vos")
class RefYouTubeVOS(PaletteVOS, Source):
    """Ref-YouTube-VOS expressions, one sample per expression."""

    splits = ("train", "valid")
    task = "rvos"

    def layout(self, root: Path, split: str) -> tuple[Path, Path, Path | None, Path | None]:
        """(meta JSON, frame root, Annotations root or None, mask_dict.pkl or None)."""
        meta = root / "meta_expressions" / split / "meta_expressions.json"
        if not meta.is_file():
            raise FileNotFoundError(f"ref_youtube_vos {split}: expected {meta}")
        ann = root / split / "Annotations"
        pkl = root / "mask_dict.pkl"
        if split == "train" and not ann.is_dir() and not pkl.is_file():
            raise FileNotFoundError(f"ref_youtube_vos train: expected masks in {ann} (palette PNGs) or {pkl}")
        return (
            meta,
            root / split / "JPEGImages",
            ann if ann.is_dir() else None,
            pkl if split == "train" and pkl.is_file() else None,
        )
