"""Sample schema, masks and registry: round trips against the real file formats, and every rejection."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelqa.data import masks
from pixelqa.data.catalog import get_source, list_sources
from pixelqa.data.registry import Source, datasets_dir, list_cards, load_card, parse_card
from pixelqa.data.schema import (
    TASKS,
    FrameDecodeError,
    Media,
    ObjectTrack,
    Prompt,
    Sample,
    SampleError,
    Turn,
    decode_frame,
    encode_frame,
    is_key,
    make_key,
)


def _sample(h: int = 20, w: int = 30, frames: int = 2) -> Sample:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = 200
    m = np.zeros((h, w), bool)
    m[2:6, 3:10] = True
    return Sample(
        key="s-1",
        source="unit",
        split="train",
        task="memory_qa",
        media=Media("video", [encode_frame(rgb, "png")] * frames, (h, w), ext="png", fps=2.0),
        objects={
            1: ObjectTrack({0: masks.encode(m), 1: masks.encode(m)}, category="box"),
            2: ObjectTrack({1: masks.encode(~m)}),
        },
        prompts=[Prompt("point", 0, 1, [4.0, 3.0]), Prompt("box", 1, 2, [0, 0, 30, 20])],
        turns=[
            Turn("user", "Compare <|ref|> with <|ref|>."),
            Turn(
                "assistant", "The relevant regions for this question are [1] <|seg|> [2] <|seg|>.", seg_objects=[1, 2]
            ),
            Turn("user", "Is [1] red?", memory_objects=[1, 2]),
            Turn("assistant", "Yes."),
        ],
        answer="Yes.",
        meta={"question_type": "unit"},
    )


def test_masks_match_numpy_truth():
    m = np.zeros((7, 9), bool)
    m[1:4, 2:7] = True
    m[5, 8] = True
    rle = masks.encode(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    assert (masks.decode(rle) == m).all()
    assert masks.area(rle) == int(m.sum()) == 16
    assert masks.to_box(rle) == (2.0, 1.0, 9.0, 6.0)  # xs 2..8, ys 1..5 -> exclusive max
    assert masks.to_box(masks.empty(3, 3)) is None
    json.dumps(rle)  # JSON-ready
    # uncompressed COCO RLE (column-major run lengths) of a 2x2 mask with only (row 1, col 0) set
    assert masks.decode({"size": [2, 2], "counts": [1, 1, 2]}).tolist() == [[False, False], [True, False]]


def test_polygon_rectangle_area_and_merge_iou():
    rle = masks.from_polygons([[2, 2, 8, 2, 8, 6, 2, 6]], 10, 12)  # a 6 x 4 rectangle
    assert abs(masks.area(rle) - 24) <= 8  # rasterisation boundary convention
    a = masks.encode(np.pad(np.ones((2, 2), bool), ((0, 2), (0, 2))))
    b = masks.encode(np.pad(np.ones((2, 2), bool), ((1, 1), (1, 1))))
    assert masks.area(masks.merge([a, b])) == 7
    assert masks.iou(a, b) == pytest.approx(1 / 7)
    r = masks.resize(np.eye(4, dtype=bool), (8, 8))
    assert r.shape == (8, 8) and r.sum() == 16 and r[7, 7] and not r[0, 7]


def test_frame_codec_roundtrip():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    assert (decode_frame(encode_frame(rgb, "png")) == rgb).all()
    assert (np.asarray(Image.open(io.BytesIO(encode_frame(rgb, "png")))) == rgb).all()  # RGB order for PIL too
    with pytest.raises(ValueError, match="rgb"):
        encode_frame(rgb[..., 0])


def test_ppm_frames_are_the_pixels_any_netpbm_reader_sees():
    rgb = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    data = encode_frame(rgb, "ppm")
    assert data.startswith(b"P6\n7 5\n255\n") and len(data) == 11 + 5 * 7 * 3
    assert (np.asarray(Image.open(io.BytesIO(data))) == rgb).all()  # PIL's Netpbm reader: an independent decoder
    out = np.zeros_like(rgb)
    assert decode_frame(data, out=out) is out and (out == rgb).all()
    assert decode_frame(data).flags.writeable  # a copy, not a view of the record's bytes
    with pytest.raises(FrameDecodeError, match="pixel bytes"):
        decode_frame(data[:-1])  # truncated
    with pytest.raises(FrameDecodeError, match="PPM header"):
        decode_frame(b"P6\n7 x\n255\n" + data[11:])
    with pytest.raises(FrameDecodeError, match=r"shape \(5, 7, 3\), expected \(7, 5, 3\)"):
        decode_frame(data, out=np.zeros((7, 5, 3), dtype=np.uint8))


def test_transcode_keeps_the_decoded_pixels():
    from pixelqa.data.schema import transcode_media

    rgb = np.random.default_rng(2).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    jpg = encode_frame(rgb, "jpg")
    media = Media("video", [jpg, jpg], (8, 8), "jpg")
    transcode_media(media, "ppm")
    assert media.ext == "ppm" and all(f.startswith(b"P6") for f in media.frames)
    assert (decode_frame(media.frames[1]) == decode_frame(jpg)).all()  # the JPEG's pixels, exactly


def test_make_key():
    # a part of [A-Za-z0-9_-] is kept as it is (the keys of shards already built do not change)
    assert make_key("coco", "train_2014", 3, "a-b") == "coco-train_2014-3-a-b"
    # a part that had to be cleaned carries the first 8 hex digits of the SHA-256 of its text
    tag = hashlib.sha256(b"train2014/0001.jpg").hexdigest()[:8]
    assert make_key("coco", "train2014/0001.jpg", 3) == f"coco-train2014_0001_jpg_{tag}-3"
    with pytest.raises(ValueError):
        make_key("", "")


def test_make_key_keeps_distinct_names_distinct():
    # names that cleaning alone maps to one key ('vid.a' / 'vid_a' -> 'vid_a'; every non-ASCII name -> '1' or '')
    names = ["vid.a", "vid_a", "vid a", "猫_1", "犬_1", "猫", "犬", "..", "/", "x.1", "x_1"]
    keys = [make_key(n, 0) for n in names]
    assert len(set(keys)) == len(names) and all(is_key(k) for k in keys)
    assert make_key("vid_a", 0) == "vid_a-0" and make_key("猫_1", 0).startswith("1_")
    # the tag is the first 8 hex digits of the name's SHA-256: the same in every process (hash() is salted)
    assert make_key("猫", 0) == f"{hashlib.sha256('猫'.encode()).hexdigest()[:8]}-0" == "a810bf84-0"
    assert make_key("x.1", 0) == "x_1_4598734b-0"


def test_valid_sample_roundtrips_through_a_real_tar(tmp_path: Path):
    s = _sample().validate(check_frames=True)
    rec = s.to_record()
    assert sorted(rec) == ["000.png", "001.png", "__key__", "json"]
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tf:
        for k, v in rec.items():
            if k == "__key__":
                continue
            ti = tarfile.TarInfo(f"{rec['__key__']}.{k}")
            ti.size = len(v)
            tf.addfile(ti, io.BytesIO(v))
    with tarfile.open(path) as tf:
        back = {m.name.split(".", 1)[1]: tf.extractfile(m).read() for m in tf.getmembers()}
    back["__key__"] = "s-1"
    s2 = Sample.from_record(back)
    assert s2 == s
    assert s2.seg_object_ids() == [1, 2]
    assert s2.decode_frames().shape == (2, 20, 30, 3)
    d = json.loads(rec["json"])
    assert d["schema_version"] == 1 and "frames" not in d["media"]


def test_from_record_takes_frames_in_order_and_rejects_a_gap_an_extra_or_a_missing_frame():
    s = _sample()
    rec = s.to_record()
    rec = {"__key__": rec["__key__"], "001.png": rec["001.png"], "json": rec["json"], "000.png": rec["000.png"]}
    assert Sample.from_record(rec).media.frames == s.media.frames  # member order does not matter
    swapped = dict(rec, **{"000.png": rec["001.png"], "001.png": rec["000.png"]})
    assert Sample.from_record(swapped).media.frames == s.media.frames[::-1]  # the check sees a wrong order
    with pytest.raises(ValueError, match=r"record frames: got \['000.png', '002.png'\]"):
        Sample.from_record({k: v for k, v in rec.items() if k != "001.png"} | {"002.png": rec["001.png"]})
    with pytest.raises(ValueError, match="frames: got '3 frame files', expected media.num_frames = 2"):
        Sample.from_record(dict(rec, **{"002.png": rec["000.png"]}))
    with pytest.raises(ValueError, match="frames: got '1 frame files', expected media.num_frames = 2"):
        Sample.from_record({k: v for k, v in rec.items() if k != "001.png"})


BREAKS = [
    ("task", lambda s: setattr(s, "task", "dance"), "task"),
    ("key with dot", lambda s: setattr(s, "key", "a.b"), "key"),
    ("rle size", lambda s: s.objects[1].masks.__setitem__(0, masks.empty(10, 10)), r"objects\[1\]\.masks\[0\]\.size"),
    ("mask frame", lambda s: s.objects[1].masks.__setitem__(5, masks.empty(20, 30)), "frame"),
    ("prompt outside", lambda s: setattr(s.prompts[0], "coords", [31.0, 3.0]), r"prompts\[0\]\.coords"),
    ("prompt frame", lambda s: setattr(s.prompts[1], "frame", 2), r"prompts\[1\]\.frame"),
    ("prompt type", lambda s: setattr(s.prompts[0], "type", "scribble"), r"prompts\[0\]\.type"),
    ("box order", lambda s: setattr(s.prompts[1], "coords", [10, 0, 5, 5]), "x2 >= x1"),
    ("ref count", lambda s: s.prompts.pop(), "<|ref|> count"),
    ("seg count", lambda s: s.turns[1].seg_objects.pop(), r"turns\[1\]\.seg_objects"),
    ("seg unknown object", lambda s: setattr(s.turns[1], "seg_objects", [1, 7]), "seg_objects"),
    ("seg in user", lambda s: setattr(s.turns[0], "text", "<|ref|> <|ref|> <|seg|>"), "user turn"),
    ("mem in text", lambda s: setattr(s.turns[2], "text", "[1]: <|mem|>"), "memory_objects"),
    ("role order", lambda s: setattr(s.turns[1], "role", "user"), r"turns\[1\]\.role"),
    ("image frames", lambda s: setattr(s.media, "kind", "image"), "media.frames"),
    ("size", lambda s: setattr(s.media, "size", (20, 0)), "media.size"),
    ("object id", lambda s: s.objects.__setitem__(-1, ObjectTrack()), "objects"),
    ("choices", lambda s: setattr(s, "choices", ["only"]), "choices"),
    ("meta", lambda s: setattr(s, "meta", {"x": object()}), "meta"),
]


@pytest.mark.parametrize("name,breaker,field", BREAKS, ids=[b[0] for b in BREAKS])
def test_validate_rejects_with_field_in_message(name, breaker, field):
    s = _sample()
    breaker(s)
    with pytest.raises(SampleError, match=field):
        s.validate()


def test_check_frames_catches_wrong_size_and_garbage():
    s = _sample()
    s.media.frames[1] = encode_frame(np.zeros((20, 31, 3), np.uint8))
    s.validate()  # cheap check does not decode
    with pytest.raises(SampleError, match=r"media.frames\[1\]"):
        s.validate(check_frames=True)
    s.media.frames[1] = b"not an image"
    with pytest.raises(SampleError, match="decodable"):
        s.validate(check_frames=True)


def test_tasks_constant_has_the_issue_tasks():
    need = "res rec rvos reasonseg reason_vos region_caption region_qa memory_qa video_qa image_qa mcq pixelqa caption"
    assert set(need.split()) <= TASKS


def test_registry_and_cards():
    assert "synthetic" in list_sources()
    src = get_source("synthetic")
    assert isinstance(src, Source) and src.name == "synthetic"
    with pytest.raises(ValueError, match="nope"):
        get_source("nope")
    with pytest.raises(ValueError, match="split"):
        list(src.items(Path("."), "bogus"))
    assert datasets_dir().name == "datasets" and "synthetic" in list_cards()
    card = load_card("synthetic")
    assert card.stages["stage3"].repeat == 1 and "res" in card.tasks
    for name in list_cards():  # every card in the repository validates
        load_card(name)


def test_a_source_not_found_names_the_converter_modules_that_failed_to_import(monkeypatch):
    from pixelqa.data import sources

    get_source("synthetic")  # the catalogue is loaded
    monkeypatch.setitem(sources.IMPORT_ERRORS, "pixelqa.data.sources.broken", "ImportError: no module named 'av'")
    with pytest.raises(ValueError, match=r"nope.*failed to import.*sources\.broken.*ImportError: no module named 'av'"):
        get_source("nope")


def test_card_validation_messages():
    good = {
        "name": "x",
        "tasks": ["res"],
        "license": "MIT",
        "homepage": "h",
        "citation": "c",
        "raw_layout": "r",
        "splits": ["train"],
        "stages": {"stage3": {"repeat": 5}},
    }
    assert parse_card(good).stages["stage3"].repeat == 5
    for patch, msg in [
        ({"tasks": ["dance"]}, "tasks"),
        ({"stages": {"stage9": {"repeat": 1}}}, "stage9"),
        ({"stages": {"stage3": {"repeat": 0}}}, "repeat"),
        ({"colour": 1}, "unknown keys"),
        ({"stages": {"stage2": {"repeat": 1, "split": "val"}}}, "split"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_card({**good, **patch})
    bad = dict(good)
    del bad["license"]
    with pytest.raises(ValueError, match="license"):
        parse_card(bad)


def test_parse_json_matches_the_standard_parser_and_falls_back_for_what_json_dumps_writes():
    import json
    import math

    from pixelqa.data.schema import parse_json

    d = {"a": [1, 2.5, -0.0, 1e-300, 2**63 - 1], "b": "é\u2028", "c": {"d": None, "e": True}}
    raw = json.dumps(d).encode()
    assert parse_json(raw) == json.loads(raw) == d and parse_json(raw.decode()) == d
    nan = parse_json(json.dumps({"fps": float("nan"), "big": 2**70}))  # orjson refuses both; json.dumps writes them
    assert math.isnan(nan["fps"]) and nan["big"] == 2**70
    with pytest.raises(ValueError):
        parse_json(b'\xff{,]"media"')


def test_frame_size_reads_the_header_a_decoder_would_allocate_by():
    from pixelqa.data.schema import FrameDecodeError, decode_frame, frame_size

    rgb = np.zeros((37, 53, 3), np.uint8)
    for ext in ("jpg", "png", "ppm"):
        data = encode_frame(rgb, ext)
        assert frame_size(data) == frame_size(memoryview(data)) == decode_frame(data).shape[:2] == (37, 53), ext
    for fmt, kw in [("JPEG", {"progressive": True}), ("JPEG", {"exif": b"Exif\0\0" + bytes(64)}), ("WEBP", {})]:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, **kw)  # progressive: SOF2; EXIF: an APP1 segment first; WebP: PIL reads it
        assert frame_size(buf.getvalue()) == (37, 53), (fmt, kw)
    jpg = encode_frame(rgb, "jpg")
    cut = 4 + int.from_bytes(jpg[4:6], "big")  # after the first segment (APP0)
    junk = jpg[:cut] + b"junk" + jpg[cut:]  # bytes between segments, which libjpeg skips: PIL reads that header
    assert frame_size(junk) == decode_frame(junk).shape[:2] == (37, 53)
    for bad in (b"not an image", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"P6 12"):
        with pytest.raises(FrameDecodeError):
            frame_size(bad)


def _png_of_size(h: int, w: int) -> bytes:
    """A PNG whose header says h x w: valid, and a few KB for any size (rows of zeros compress to nothing)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = zlib.compress(b"".join(b"\0" + bytes(w * 3) for _ in range(h)), 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_a_frame_whose_header_disagrees_with_media_size_is_refused_before_decoding(monkeypatch):
    import cv2

    s = _sample(frames=3)
    s.media.frames[2] = _png_of_size(3000, 3000)  # the sample says 20 x 30: 27 MB if decoded
    rec = s.to_record()
    with pytest.raises(SampleError, match=r"media.frames\[2\]: its header gives 3000x3000 .* media.size 20x30"):
        Sample.from_record(rec)  # what every shard reader goes through: a counted damaged record

    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))  # the module schema imports
    with pytest.raises(FrameDecodeError, match=r"media.frames\[2\].*not decoded"):
        s.decode_frames()  # a sample built another way: every header is checked before any frame is decoded
    assert decoded == []
    assert s.decode_frames([0, 1]).shape == (2, 20, 30, 3) and len(decoded) == 2
    with pytest.raises(SampleError, match=r"media.frames\[2\]: got 'header size \(3000, 3000\)'"):
        s.validate(check_frames=True)
    assert len(decoded) == 4  # frames 0 and 1 only


@pytest.mark.parametrize("key", ["../../x", "/tmp/x", "a/b", "a.b", "ok\n", "", "-lead", 7, None])
def test_from_record_refuses_a_key_that_is_no_plain_file_name(key):
    rec = _sample().to_record()
    d = json.loads(rec["json"])
    d["key"] = key
    with pytest.raises(SampleError, match="key: got"):
        Sample.from_record(dict(rec, json=json.dumps(d).encode()))  # inspect makes the key a file name
    from pixelqa.data.schema import is_key

    assert not is_key(key) and is_key("synthetic-val-0000010") and is_key("a_b-C9")


def _deep(n: int) -> list:
    """A list nested n levels deep."""
    v: list = []
    for _ in range(n - 1):
        v = [v]
    return v


def test_json_nested_past_the_parsers_is_a_value_error():
    from pixelqa.data.schema import parse_json

    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)  # orjson refuses; the standard parser would recurse
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(b'{"fps": NaN, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")  # the fallback path


def test_values_nested_past_the_limit_are_refused_where_pickle_or_repr_would_recurse_out():
    from pixelqa.data.schema import MAX_NESTING

    rec = _sample().to_record()
    d = json.loads(rec["json"])
    for field, value in [("meta", {"x": _deep(MAX_NESTING)}), ("choices", _deep(MAX_NESTING + 1))]:
        with pytest.raises(SampleError, match=f"{field}: .*at most {MAX_NESTING} levels"):
            Sample.from_record(dict(rec, json=json.dumps({**d, field: value}).encode()))
    ok = {**d, "meta": {"x": _deep(MAX_NESTING - 1)}}  # MAX_NESTING levels with the dict: still read
    assert Sample.from_record(dict(rec, json=json.dumps(ok).encode())).meta == ok["meta"]
    s = _sample()
    s.meta = {"x": _deep(5000)}
    with pytest.raises(SampleError, match="meta"):
        s.validate()  # json.dumps would recurse out
    s.meta = {}
    s.prompts[0].coords = _deep(5000)
    with pytest.raises(SampleError, match=r"prompts\[0\]\.coords: got a list nested too deeply"):
        s.validate()  # the message's repr would recurse out


def test_a_frame_past_the_pixel_cap_is_refused_naming_media_size():
    from pixelqa.data.schema import MAX_FRAME_PIXELS

    s = _sample()
    s.media.size = (9500, 9500)  # 90.25 M pixels
    assert 9500 * 9500 > MAX_FRAME_PIXELS == 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS
    with pytest.raises(SampleError, match=r"media\.size: got \[9500, 9500\].*at most 89478485 pixels"):
        s.validate()
    s.media.size = (20, 30)
    s.validate()  # the sample itself is fine
