"""LLaVA-1.5 mixed instruction data (llava_v1_5_mix665k.json): general image QA conversations.

Raw layout (the LLaVA-1.5 release)::

    <root>/llava_v1_5_mix665k.json     [{"id", "image": "coco/train2017/000000033471.jpg",
                                         "conversations": [{"from": "human", "value": "<image>\\n..."},
                                                           {"from": "gpt", "value": "..."}, ...]}, ...]
    <root>/coco/train2017/  <root>/gqa/images/  <root>/ocr_vqa/images/  <root>/textvqa/train_images/
    <root>/vg/VG_100K/  <root>/vg/VG_100K_2/

The `<image>` placeholder is removed (collate places the image). Records without "image" (the
text-only ShareGPT part) are left out: a sample must carry at least one frame. OCR-VQA files that are
really GIF/PNG under a .jpg name are re-encoded (see `_image_files.read_image`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.schema import Sample, Turn, make_key
from pixelqa.data.sources._image_files import cached_json_list, first_existing, read_image, require

ANNOTATION = "llava_v1_5_mix665k.json"
_ROLES = {"human": "user", "gpt": "assistant"}


def llava_turns(convs: object, where: str) -> list[Turn]:
    """LLaVA conversations -> alternating user/assistant Turns; a trailing unanswered question is dropped."""
    if not isinstance(convs, list):
        raise TypeError(f"{where}.conversations: got {type(convs).__name__}, expected a list of turns")
    convs = convs[: len(convs) // 2 * 2]
    if not convs:
        raise ValueError(f"{where}.conversations: got no question-answer pair, expected at least one")
    turns = []
    for i, c in enumerate(convs):
        frm = require(c, "from", f"{where}.conversations[{i}]")
        expected = "human" if i % 2 == 0 else "gpt"
        if frm != expected:
            raise ValueError(f"{where}.conversations[{i}].from: got {frm!r}, expected {expected!r} (alternating)")
        text = str(require(c, "value", f"{where}.conversations[{i}]")).replace("<image>", "").strip()
        turns.append(Turn(_ROLES[frm], text))
    return turns


@register_source("llava_mix665k")
class LLaVAMix665K(Source):
    """LLaVA-1.5-mix-665K image conversations (UniPixel stage 3, 647K image samples, repeat 1)."""

    splits = ("train",)

    def annotation_file(self, root: Path) -> Path:
        """<root>/llava_v1_5_mix665k.json."""
        return first_existing([Path(root) / ANNOTATION], f"LLaVA {ANNOTATION}")

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The JSON file."""
        return [self.annotation_file(root)]

    def _records(self, root: Path, split: str) -> list:
        self.check_split(split)
        return cached_json_list(self.annotation_file(root))

    def items(self, root: Path, split: str) -> list[int]:
        """Indices of the records that have an image."""
        return [i for i, r in enumerate(self._records(root, split)) if isinstance(r, dict) and "image" in r]

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """One sample per record."""
        rec = self._records(root, split)[int(item)]
        where = f"{ANNOTATION}[{item}]"
        image_rel = str(require(rec, "image", where))
        turns = llava_turns(require(rec, "conversations", where), where)
        image = read_image(Path(root) / image_rel)
        yield Sample(
            key=make_key(item),
            source=self.name,
            split=split,
            task="image_qa",
            media=image.media(image_rel),
            turns=turns,
            meta={"id": str(rec.get("id", item)), "image": image_rel},
        )
