"""MeViS (Ding et al., ICCV 2023): motion expressions for video segmentation.

Raw layout (the release)::

    <root>/{train,valid_u,valid}/meta_expressions.json   {"videos": {vid: {"expressions": {id: {"exp",
                                                          "obj_id": [..], "anno_id": [..]}}, "frames": [..]}}}
    <root>/{train,valid_u}/mask_dict.json                {anno_id: [RLE or null per frame]}
    <root>/{train,valid_u,valid}/JPEGImages/<vid>/<frame>.jpg

An expression may name several objects: its target is their union. valid has no public masks.
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.sources.vos import MaskDictVOS


@register_source("mevis")
class MeViS(MaskDictVOS, Source):
    """MeViS expressions, one sample per expression."""

    splits = ("train", "valid_u", "valid")
    task = "rvos"

    def paths(self, root: Path, split: str) -> tuple[Path, Path | None, Path]:
        """(meta JSON, mask dict or None, frame root)."""
        meta = root / split / "meta_expressions.json"
        if not meta.is_file():
            raise FileNotFoundError(f"mevis {split}: expected {meta}")
        mask = root / split / "mask_dict.json"
        if split != "valid" and not mask.is_file():
            raise FileNotFoundError(f"mevis {split}: expected {mask}")
        return meta, (mask if mask.is_file() else None), root / split / "JPEGImages"
