"""ReasonSeg converter on a fixture in LISA's release format (jpg + LabelMe-style json, explanatory json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_image import build_reasonseg, rect_mask

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.registry import SkippedSample
from pixelqa.prompt_format import SEG


def _incl(x1, y1, x2, y2):
    """Pixels of a rectangle polygon as cv2 fills it (boundary included)."""
    return rect_mask(x1, y1, x2 + 1, y2 + 1)


def test_reasonseg_train_masks_queries_and_explanatory(tmp_path):
    build_reasonseg(tmp_path)
    src = get_source("reasonseg")
    assert src.items(tmp_path, "train") == ["a_1", "b_2", "c_3"]
    everything = list(src.samples(tmp_path, "train"))
    skipped = [s for s in everything if isinstance(s, SkippedSample)]
    assert [s.key for s in skipped] == ["c_3-0"] and "no 'target' region" in skipped[0].reason  # counted, not lost
    samples = [s.validate(check_frames=True) for s in everything if s not in skipped]
    assert [s.key for s in samples] == ["a_1-0", "a_1-1", "a_1-exp", "b_2-0"]  # c_3 has no target
    a0, a1, aexp, b0 = samples
    assert all(s.task == "reasonseg" for s in samples)
    # big target painted first, the smaller ignore polygon on top of it
    want_a = _incl(2, 2, 20, 15) & ~_incl(5, 5, 8, 8)
    np.testing.assert_array_equal(masks.decode(a0.objects[1].masks[0]), want_a)
    np.testing.assert_array_equal(masks.decode(a0.meta["ignore_rle"]), _incl(5, 5, 8, 8))
    assert a0.meta["is_sentence"] is True and a0.meta["query_index"] == 0
    assert (
        a0.turns[0].text.startswith("What keeps the room warm?") and a1.meta["query"] == "Which thing would you sit on?"
    )
    assert a0.turns[1].seg_objects == [1] and a0.turns[1].text.count(SEG) == 1
    # explanatory: the answer carries the explanation after the <|seg|> answer
    assert aexp.meta["explanatory"] is True
    assert aexp.turns[1].text.endswith("The fireplace heats the room.")
    # ignore everywhere, small target on top; the 'flag' shape is not painted
    np.testing.assert_array_equal(masks.decode(b0.objects[1].masks[0]), _incl(10, 10, 14, 12))
    np.testing.assert_array_equal(masks.decode(b0.meta["ignore_rle"]), ~_incl(10, 10, 14, 12))
    assert b0.meta["is_sentence"] is False and "red cup" in b0.turns[0].text


def test_reasonseg_val_keeps_queries_without_target(tmp_path):
    build_reasonseg(tmp_path)
    val = [s.validate() for s in get_source("reasonseg").samples(tmp_path, "val")]
    assert [s.key for s in val] == ["d_4-0"]
    assert masks.area(val[0].objects[1].masks[0]) == 0
    assert masks.area(val[0].meta["ignore_rle"]) == 25


def test_reasonseg_malformed_json_raises_naming_field(tmp_path):
    build_reasonseg(tmp_path)
    p = tmp_path / "train" / "a_1.json"
    ann = json.loads(p.read_text())
    del ann["shapes"]
    p.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="shapes"):
        list(get_source("reasonseg").convert(tmp_path, "train", "a_1"))
    ann["shapes"] = [{"label": "object", "points": [[0, 0], [1, 1], [2, 0]]}]
    p.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="label"):
        list(get_source("reasonseg").convert(tmp_path, "train", "a_1"))


def test_reasonseg_missing_split_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="val"):
        get_source("reasonseg").items(tmp_path, "val")


def test_reasonseg_json_in_cp1252_is_read(tmp_path):
    # Some ReasonSeg JSONs are Windows-1252 text (LISA's loader falls back to it): curly quotes, accents.
    build_reasonseg(tmp_path)
    path = tmp_path / "train" / "a_1.json"
    ann = json.loads(path.read_text())
    ann["text"] = ["Where’s the café’s warmest spot?", "Which thing would you sit on?"]
    raw = json.dumps(ann, ensure_ascii=False).encode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # guard: the file really is not UTF-8
    path.write_bytes(raw)
    a0 = next(s for s in get_source("reasonseg").samples(tmp_path, "train") if s.key == "a_1-0").validate()
    assert a0.meta["query"] == "Where’s the café’s warmest spot?"
    assert a0.turns[0].text.startswith("Where’s the café’s warmest spot?")
    # Bytes that are neither UTF-8 nor cp1252 (0x81 is undefined in cp1252) name the file.
    path.write_bytes(b'{"text": ["\x81"]}')
    with pytest.raises(ValueError, match=r"a_1\.json: not UTF-8"):
        list(get_source("reasonseg").convert(tmp_path, "train", "a_1"))


def _square(x: int, y: int, side: int = 4) -> list[list[int]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side]]


@pytest.mark.parametrize("first", ["target", "ignore"])
def test_equal_area_polygons_overlap_as_lisa_paints_them(first):
    # LISA paints in np.argsort(area)[::-1] order: of two equal areas the later polygon is painted first, so the
    # earlier one ends on top (a stable descending sort paints them in file order and the later one would win)
    from pixelqa.data.sources.reasonseg import polygon_masks

    second = "ignore" if first == "target" else "target"
    shapes = [{"label": first, "points": _square(2, 2)}, {"label": second, "points": _square(4, 4)}]
    target, ignore = polygon_masks(shapes, 24, 32, "t.json")  # the fixture size of `_incl`
    a, b = _incl(2, 2, 6, 6), _incl(4, 4, 8, 8)  # 25 px each, overlapping on a 3 x 3 block
    assert a.sum() == b.sum() == 25 and (a & b).sum() == 9
    want = {first: a, second: b & ~a}  # the earlier polygon keeps the overlap
    np.testing.assert_array_equal(target, want["target"])
    np.testing.assert_array_equal(ignore, want["ignore"])
