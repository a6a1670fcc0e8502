"""ReVOS (Yan et al., ECCV 2024, the VISA benchmark): referring and reasoning video object segmentation.

Raw layout (the release)::

    <root>/JPEGImages/<vid>/<frame>.jpg        (UniPixel unpacks the frames straight into <root>/<vid>/)
    <root>/meta_expressions_train_.json        {"videos": {vid: {"frames": [..], "height", "width",
    <root>/meta_expressions_valid_.json          "expressions": {id: {"exp", "obj_id": [..], "anno_id": [..],
                                                 "type_id"}}}}}
    <root>/mask_dict.json                      {anno_id: [RLE or null per frame]} (train and valid)
    <root>/mask_dict_foreground.json           {vid: {"masks_rle": [RLE per frame], ...}} union of all objects

The evaluation reports J, F, J&F, A (pixel accuracy) and R (robustness: 1 - false-positive pixels over the
video's foreground) separately for type_id 0 (referring) and 1 (reasoning), overall = their mean. Each
sample's meta therefore carries type_id, expression_type ("referring" / "reasoning" / "type_<n>"),
no_target (an expression whose object list is empty: the answer is an empty mask) and, for valid, the
per-frame foreground RLEs that R needs. Training samples of the long TAO videos are cropped to the span where
the target is visible (at least 2 frames), as in the reference recipe.
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.data import masks
from pixelqa.data.registry import Source, register_source
from pixelqa.data.sources._image_files import cached_json
from pixelqa.data.sources.vos import Expression, MaskDictVOS

EXPRESSION_TYPES = {0: "referring", 1: "reasoning"}


@register_source("revos")
class ReVOS(MaskDictVOS, Source):
    """ReVOS expressions, one sample per expression."""

    splits = ("train", "valid")
    task = "reason_vos"
    family = None  # released: 'sentence' for a question ending in '?', else 'query'

    def paths(self, root: Path, split: str) -> tuple[Path, Path | None, Path]:
        """(meta JSON, mask dict, frame root)."""
        meta = root / f"meta_expressions_{split}_.json"
        if not meta.is_file():
            raise FileNotFoundError(f"revos {split}: expected {meta}")
        mask = root / "mask_dict.json"
        if not mask.is_file():
            raise FileNotFoundError(f"revos {split}: expected {mask}")
        frames = root / "JPEGImages"
        return meta, mask, frames if frames.is_dir() else root

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """Meta JSON, mask dict and (valid) the foreground mask dict."""
        files = super().raw_files(root, split)
        fg = Path(root) / "mask_dict_foreground.json"
        return files + ([fg] if split == "valid" else [])

    def crop(self, split: str, vid: str, target: dict[int, dict], num_frames: int) -> tuple[int, int] | None:
        """Training TAO videos are long: keep the span from the first to the last frame where the target is visible."""
        if split != "train" or not vid.startswith("TAO/"):
            return None
        visible = [t for t, r in sorted(target.items()) if masks.area(r) > 0]
        return (visible[0], visible[-1] + 1) if visible else (0, 0)

    def extra_meta(self, root: Path, split: str, vid: str, video: dict, exp: Expression) -> dict:
        """type_id, expression_type and (valid) the foreground masks for the R score."""
        type_id = exp.raw.get("type_id")
        if type_id is None:
            raise ValueError(
                f"revos {split}: {vid}/{exp.exp_id} has no 'type_id', expected 0 (referring) or 1 (reasoning)"
            )
        meta = {"type_id": int(type_id), "expression_type": EXPRESSION_TYPES.get(int(type_id), f"type_{int(type_id)}")}
        if split == "valid":
            fg_path = Path(root) / "mask_dict_foreground.json"
            fg = cached_json(str(fg_path))
            if vid not in fg or "masks_rle" not in fg[vid]:
                raise ValueError(f"{fg_path}: no 'masks_rle' for video {vid!r}")
            meta["foreground_rles"] = [masks.normalize(r) for r in fg[vid]["masks_rle"]]
        return meta
