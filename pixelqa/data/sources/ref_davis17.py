"""Ref-DAVIS17 (Khoreva et al., ACCV 2018): referring expressions for DAVIS 2017 videos.

Raw layout (DAVIS 2017 trainval + the expressions converted to meta_expressions JSON as in ReferFormer)::

    <root>/meta_expressions/{train,valid}/meta_expressions.json
    <root>/DAVIS/JPEGImages/480p/<vid>/<frame>.jpg     (or <root>/{train,valid}/JPEGImages/<vid>/...)
    <root>/DAVIS/Annotations/480p/<vid>/<frame>.png    palette PNG, pixel value = object id
                                                       (or <root>/{train,valid}/Annotations/<vid>/...)
    <root>/{train,valid}/mask_dict.pkl                 (UniPixel-SFT-1M re-pack, instead of the PNGs)

Each object has 4 expressions (2 annotators x first-frame / full-video), stored object by object, so the
expression at position i of a video belongs to object i // 4 and annotation set i % 4; the benchmark
scores each annotation set separately and averages (meta: annotation_set, object_index).
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.sources.vos import Expression, PaletteVOS

EXPRESSIONS_PER_OBJECT = 4


@register_source("ref_davis17")
class RefDAVIS17(PaletteVOS, Source):
    """Ref-DAVIS17 expressions, one sample per expression."""

    splits = ("train", "valid")
    task = "rvos"

    def layout(self, root: Path, split: str) -> tuple[Path, Path, Path | None, Path | None]:
        """(meta JSON, frame root, Annotations root or None, mask_dict.pkl or None)."""
        meta = root / "meta_expressions" / split / "meta_expressions.json"
        if not meta.is_file():
            raise FileNotFoundError(f"ref_davis17 {split}: expected {meta}")
        frames = next(
            (p for p in (root / split / "JPEGImages", root / "DAVIS" / "JPEGImages" / "480p") if p.is_dir()), None
        )
        if frames is None:
            raise FileNotFoundError(
                f"ref_davis17 {split}: expected frames in {root / 'DAVIS/JPEGImages/480p'} "
                f"or {root / split / 'JPEGImages'}"
            )
        ann = next(
            (p for p in (root / split / "Annotations", root / "DAVIS" / "Annotations" / "480p") if p.is_dir()), None
        )
        pkl = root / split / "mask_dict.pkl"
        if ann is None and not pkl.is_file():
            raise FileNotFoundError(
                f"ref_davis17 {split}: expected masks in {root / 'DAVIS/Annotations/480p'}, "
                f"{root / split / 'Annotations'} or {pkl}"
            )
        return meta, frames, ann, (pkl if pkl.is_file() else None)

    def extra_meta(self, vid: str, video: dict, exp: Expression, position: int) -> dict:
        """Which annotation set and object the expression belongs to."""
        return {"annotation_set": position % EXPRESSIONS_PER_OBJECT, "object_index": position // EXPRESSIONS_PER_OBJECT}
