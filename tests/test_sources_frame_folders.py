"""Frame folders and frame files as they come off disks and phones, through the video converters: unpadded frame
names in time order (MVBench, VideoGPT+), hidden files skipped (macOS `._*` twins, `.DS_Store`: also Inst-IT,
VideoRefer, GroundMoRe), EXIF-rotated frame files kept in stored order, pictures of more than 8 bits scaled."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from fixtures_video import H, W, build_groundmore, build_instit, build_mvbench
from PIL import Image

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import SkippedSample
from pixelqa.data.schema import decode_frame
from pixelqa.data.sources._frame_order import frame_files, is_hidden
from pixelqa.data.sources._image_files import eight_bit, read_image
from pixelqa.data.sources.mvbench import TASKS
from pixelqa.data.sources.video_io import read_frame_files, read_rgb
from pixelqa.data.sources.videogpt_plus import sampled_frames
from pixelqa.data.sources.videorefer import read_media as videorefer_media
from pixelqa.frame_sampling import fps_indices

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64  # not an image


def convert_all(name, root, split):
    """Every sample of a split, validated (skipped records left out)."""
    src = get_source(name)
    out = (s for item in src.items(root, split) for s in src.convert(root, split, item))
    return [s.validate(check_frames=True) for s in out if not isinstance(s, SkippedSample)]


def level_frames(folder, names, step: int = 8) -> None:
    """Flat grey JPEG frames whose level tells their place: frame k (0-based) at 5 + step * k."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        cv2.imwrite(str(folder / n), np.full((H, W, 3), 5 + step * k, np.uint8))


def levels(frames, step: int = 8) -> list[int]:
    return [round((float(np.asarray(f).mean()) - 5) / step) for f in frames]


def hide_junk(folder) -> None:
    """What macOS and Windows leave in a folder: an AppleDouble twin of a frame, .DS_Store."""
    first = sorted(p for p in folder.iterdir() if not p.name.startswith("."))[0]
    (folder / f"._{first.name}").write_bytes(APPLE_DOUBLE)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 32)


def test_frame_files_orders_by_number_and_skips_hidden_files(tmp_path):
    level_frames(tmp_path, [f"frame_{i}.jpg" for i in range(1, 13)])
    hide_junk(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in frame_files(tmp_path)] == [f"frame_{i}.jpg" for i in range(1, 13)]
    assert is_hidden("a/._x.jpg") and is_hidden(".DS_Store") and not is_hidden("./x.jpg")


@pytest.mark.parametrize("junk", [False, True], ids=["unpadded", "unpadded+hidden"])
def test_mvbench_frame_folder_in_time_order_without_hidden_files(tmp_path, junk):
    build_mvbench(tmp_path, TASKS)
    ep = tmp_path / "video" / "tvqa" / "frames_fps3_hq" / "ep1"
    for p in ep.iterdir():
        p.unlink()
    level_frames(ep, [f"{i}.jpg" for i in range(1, 31)])  # 1.jpg .. 30.jpg, not zero-padded
    if junk:
        hide_junk(ep)
    _, e = convert_all("mvbench", tmp_path, "test")
    ids = fps_indices(30, 3.0, 2.0, 16)
    assert e.media.frame_ids == ids and levels(e.decode_frames()) == ids


@pytest.mark.parametrize("junk", [False, True], ids=["unpadded", "unpadded+hidden"])
def test_videogpt_plus_frame_folder_in_time_order_without_hidden_files(tmp_path, junk):
    folder = tmp_path / "frames_b"
    level_frames(folder, [f"frame_{i}.jpg" for i in range(1, 13)])
    if junk:
        hide_junk(folder)
    frames, ext, size, ids, _ = sampled_frames(folder, 4)
    assert ext == "jpg" and size == (H, W) and ids == [1, 4, 7, 10]
    assert levels(decode_frame(f) for f in frames) == ids


def test_videorefer_frame_folder_skips_hidden_files(tmp_path):
    level_frames(tmp_path / "v", [f"{i:05d}.jpg" for i in range(6)])
    hide_junk(tmp_path / "v")
    fs, ids = videorefer_media(tmp_path / "v", [0, 5], context=0)
    assert ids == [0, 5] and levels(decode_frame(f) for f in fs.frames) == [0, 5]


def test_instit_video_folder_skips_hidden_files(tmp_path):
    truth = build_instit(tmp_path)
    hide_junk(tmp_path / "videos_raw" / "clips" / "vid1")
    q0, _ = convert_all("instit_video_qa", tmp_path, "train")
    assert q0.media.frame_ids == ["1.png", "2.png", "10.png"]
    np.testing.assert_array_equal(q0.decode_frames([0])[0], truth["frames"][0])


@pytest.mark.parametrize("split", ["train", "test"])
def test_groundmore_skips_hidden_images_and_masks(tmp_path, split):
    build_groundmore(tmp_path)
    adir = tmp_path / "annotations" / "vid_0001"
    (adir / "images" / "._frame0.jpg").write_bytes(APPLE_DOUBLE)
    (adir / "masks" / "._frame1.png").write_bytes(APPLE_DOUBLE)
    samples = convert_all("groundmore", tmp_path, split)
    assert len(samples) == 2
    if split == "train":
        assert samples[0].media.frame_ids == ["frame1", "frame3"]
    else:
        assert sorted(set(samples[0].media.frame_ids)) == [f"frame{i}" for i in range(5)]


# ---- EXIF-rotated frame files (stored order, as the annotations) ------------------------------------------------


def stored_frame() -> np.ndarray:
    a = np.full((H, W, 3), 60, np.uint8)
    a[0:8, 0:8] = (230, 30, 30)  # red in the stored top-left corner
    return a


def png_with_late_exif(path, rgb: np.ndarray, orientation: int) -> None:
    """A PNG whose eXIf chunk follows the pixels (allowed; OpenCV still applies it)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    body = exif.tobytes()
    if body.startswith(b"Exif\x00\x00"):
        body = body[6:]
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    path.write_bytes(data[:-12] + chunk + data[-12:])  # before IEND


def test_exif_rotated_frame_files_are_kept_in_stored_order(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = []
    for i in range(2):
        Image.fromarray(stored_frame()).save(tmp_path / f"{i}.jpg", exif=exif, quality=95)
        paths.append(str(tmp_path / f"{i}.jpg"))
    fs = read_frame_files(paths)
    assert fs.size == (H, W) and fs.ext == "jpg"
    for data in fs.frames:
        got = decode_frame(data)  # the schema's decoder would turn an EXIF-rotated file
        assert got.shape == (H, W, 3) and np.abs(got.astype(float) - stored_frame()).mean() < 4
    png_with_late_exif(tmp_path / "late.png", stored_frame(), 6)
    assert cv2.imread(str(tmp_path / "late.png")).shape[:2] == (W, H)  # not vacuous: OpenCV turns it
    Image.fromarray(stored_frame()).save(tmp_path / "plain.png")
    fs = read_frame_files([str(tmp_path / "late.png"), str(tmp_path / "plain.png")])
    assert fs.size == (H, W) and np.array_equal(decode_frame(fs.frames[0]), stored_frame())  # PNG: exact
    assert fs.frames[1] == (tmp_path / "plain.png").read_bytes()  # no EXIF: the bytes as they are
    assert read_rgb(paths[0]).shape == (H, W, 3)  # the mixed-extension path: stored order too
    mixed = read_frame_files([paths[0], str(tmp_path / "plain.png")])
    assert mixed.size == (H, W) and all(decode_frame(f).shape == (H, W, 3) for f in mixed.frames)
    image = read_image(tmp_path / "late.png")
    assert image.size == (H, W) and decode_frame(image.data).shape == (H, W, 3)


def test_more_than_8_bits_is_scaled_like_opencv_decodes_a_16_bit_png(tmp_path):
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    got = decode_frame(read_image(tmp_path / "g16.tif").data)[..., 0].astype(int)  # re-encoded as JPEG: close
    assert np.abs(got - (ramp >> 8)).mean() < 2
    assert np.array_equal(np.asarray(eight_bit(Image.fromarray(ramp))), (ramp >> 8).astype(np.uint8))
    wide = Image.fromarray((ramp.astype(np.int32) - 30000) * 3)  # 'I' beyond 0..65535: min-max
    out = np.asarray(eight_bit(wide))
    assert wide.mode == "I" and out.min() == 0 and out.max() == 255
    assert eight_bit(Image.fromarray(np.zeros((H, W), np.float32))).getextrema() == (0, 0)
    assert eight_bit(Image.fromarray(np.zeros((H, W, 3), np.uint8))).mode == "RGB"  # 8-bit: unchanged
