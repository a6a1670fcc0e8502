"""LLaVA-1.5-mix-665K converter on a fixture in the release's JSON format."""

from __future__ import annotations

import json

import pytest
from fixtures_image import H, W, build_llava

from pixelqa.data.catalog import get_source
from pixelqa.data.schema import decode_frame


def test_llava_image_records_become_image_qa(tmp_path):
    build_llava(tmp_path)
    src = get_source("llava_mix665k")
    assert src.items(tmp_path, "train") == [0, 2]  # the text-only record 1 is left out
    a, b = [s.validate(check_frames=True) for s in src.samples(tmp_path, "train")]
    assert (
        a.task == "image_qa"
        and a.key == "0"
        and a.meta == {"id": "000000033471", "image": "coco/train2017/000000033471.jpg"}
    )
    assert [t.role for t in a.turns] == ["user", "assistant", "user", "assistant"]
    assert a.turns[0].text == "What are the colors of the bus in the image?"
    assert a.turns[3].text == "The back of the bus features an advertisement."
    assert a.media.frames[0] == (tmp_path / a.meta["image"]).read_bytes() and a.media.ext == "jpg"
    assert b.turns[0].text == "Who wrote this book?"
    assert not a.objects and not a.prompts


def test_llava_gif_named_jpg_is_reencoded(tmp_path):
    fx = build_llava(tmp_path)
    (b,) = [s.validate(check_frames=True) for s in get_source("llava_mix665k").convert(tmp_path, "train", 2)]
    raw = (tmp_path / "ocr_vqa/images/140031996.jpg").read_bytes()
    assert raw[:3] == b"GIF" and b.media.frames[0][:2] == b"\xff\xd8"  # now a JPEG
    rgb = decode_frame(b.media.frames[0])
    assert rgb.shape == (H, W, 3)
    # GIF keeps the 4 colours exactly; JPEG re-encoding (quality 95) changes them only slightly
    assert abs(rgb.astype(int) - fx["gif_pixels"].astype(int)).mean() < 4


def test_llava_malformed_records(tmp_path):
    build_llava(tmp_path)
    path = tmp_path / "llava_v1_5_mix665k.json"
    data = json.loads(path.read_text())
    data[0]["conversations"][0]["from"] = "gpt"
    del data[2]["conversations"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "llava_v1_5_mix665k.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"from: got 'gpt', expected 'human'"):
        list(get_source("llava_mix665k").convert(bad, "train", 0))
    with pytest.raises(ValueError, match="conversations"):
        list(get_source("llava_mix665k").convert(bad, "train", 2))
    with pytest.raises(FileNotFoundError, match="llava_v1_5_mix665k.json"):
        get_source("llava_mix665k").items(tmp_path / "nowhere", "train")
