"""predict on media as users have them: mask images from editors (palettes, transparency, JPEG), 16-bit pictures,
frames folders with unpadded names, hidden and foreign files, files without a suffix, MJPEG clips whose frames
carry EXIF, and the outputs' sequence folder and animation rate. Every file is crafted here, small."""

from __future__ import annotations

import fractions
import io
import json

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pixelqa.predict import __main__ as cli
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.media import (
    MediaInfo,
    _frame_orientation,
    media_from_tensor,
    media_warnings,
    probe_media,
    read_media,
)
from pixelqa.predict.outputs import overlay_fps, sequence_name, write_outputs
from pixelqa.predict.predictor import Prediction
from pixelqa.predict.prompts import check_prompts, parse_prompt, read_mask_png

H, W = 48, 64


def truth() -> np.ndarray:
    """The object of every crafted mask: a 12x13 block (156 pixels)."""
    m = np.zeros((H, W), bool)
    m[12:24, 8:21] = True
    return m


def mask_of(path) -> np.ndarray:
    return read_mask_png(str(path), str(path))


def grey_frame(level: int) -> np.ndarray:
    return np.full((H, W, 3), level, np.uint8)


# ---- mask images (findings 1, 2, 13) ------------------------------------------------------------------------------


def test_a_palette_mask_is_read_by_colour_unless_it_is_a_label_map(tmp_path):
    m = truth().astype(np.uint8) * 255
    # PIL's adaptive palette puts white first: the object is index 0, the background index 1
    Image.fromarray(np.stack([m] * 3, -1)).convert("P", palette=Image.ADAPTIVE, colors=2).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").getpalette()[:3] == [255, 255, 255]
    assert np.array_equal(mask_of(tmp_path / "a.png"), truth())
    # an editor's palette: index 0 white (the object), index 1 black
    p = Image.fromarray(np.where(truth(), 0, 1).astype(np.uint8), "P")
    p.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    p.save(tmp_path / "white0.png")
    assert np.array_equal(mask_of(tmp_path / "white0.png"), truth())
    # a DAVIS label map (black at index 0): every index > 0, whatever its colour
    label = np.zeros((H, W), np.uint8)
    label[truth()] = 1
    label[40:44, 50:60] = 2
    d = Image.fromarray(label, "P")
    d.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    d.save(tmp_path / "davis.png")
    assert np.array_equal(mask_of(tmp_path / "davis.png"), label > 0)


def test_transparency_marks_the_object(tmp_path):
    alpha = truth().astype(np.uint8) * 255
    white = np.full((H, W, 3), 255, np.uint8)
    Image.fromarray(np.dstack([white, alpha]), "RGBA").save(tmp_path / "rgba.png")  # a cut-out on white
    Image.fromarray(np.dstack([white[..., 0], alpha]), "LA").save(tmp_path / "la.png")
    # palette [red, white] with the white background index transparent: the red object is index 0
    p = Image.fromarray(np.where(truth(), 0, 1).astype(np.uint8), "P")
    p.putpalette([255, 0, 0, 255, 255, 255] + [0] * 762)
    p.save(tmp_path / "trns.png", transparency=1)
    for name in ("rgba.png", "la.png", "trns.png"):
        assert np.array_equal(mask_of(tmp_path / name), truth()), name
    # alpha that leaves every pixel opaque says nothing: the colours are read
    colour = np.zeros((H, W, 3), np.uint8)
    colour[truth()] = (255, 0, 0)
    Image.fromarray(np.dstack([colour, np.full((H, W), 255, np.uint8)]), "RGBA").save(tmp_path / "opaque.png")
    nearly = np.full((H, W), 255, np.uint8)
    nearly[0, :] = 200  # a soft border, still opaque
    Image.fromarray(np.dstack([colour, nearly]), "RGBA").save(tmp_path / "nearly.png")
    assert np.array_equal(mask_of(tmp_path / "opaque.png"), truth())
    assert np.array_equal(mask_of(tmp_path / "nearly.png"), truth())


def test_8_bit_masks_are_cut_at_half_range_and_small_values_stay_labels(tmp_path):
    m = truth().astype(np.uint8) * 255
    Image.fromarray(m).save(tmp_path / "mask.jpg", quality=75)  # JPEG rings around the edges
    ringing = np.asarray(Image.open(tmp_path / "mask.jpg")) > 0
    assert ringing.sum() > truth().sum() + 10  # not vacuous: "non-zero" takes the noise
    assert (mask_of(tmp_path / "mask.jpg") != truth()).sum() <= 2
    soft = m.copy()
    soft[11, 8:21] = 60  # an anti-aliased edge below half range
    Image.fromarray(np.stack([soft, soft * 0, soft * 0], -1)).save(tmp_path / "soft_red.png")
    assert np.array_equal(mask_of(tmp_path / "soft_red.png"), truth())
    # 0/1 masks and object-id maps (every value <= 127): every non-zero pixel, as documented before
    Image.fromarray(truth().astype(np.uint8)).save(tmp_path / "01.png")
    ids = truth().astype(np.uint8) * 2
    ids[40:44, 50:60] = 7
    Image.fromarray(ids).save(tmp_path / "ids.png")
    Image.fromarray(truth().astype(np.uint16)).save(tmp_path / "01_16bit.png")
    assert np.array_equal(mask_of(tmp_path / "01.png"), truth())
    assert np.array_equal(mask_of(tmp_path / "ids.png"), ids > 0)
    assert np.array_equal(mask_of(tmp_path / "01_16bit.png"), truth())
    # the rule is in --help and in the message of a mask with no object pixel
    assert "above 127" in " ".join(cli.build_parser().format_help().split())
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "empty.png")
    info = MediaInfo("x.png", "image", 1, H, W)
    with pytest.raises(PredictInputError, match=r"--mask: .*empty.png' is empty \(no object pixel; object = opaque"):
        check_prompts([parse_prompt("mask", str(tmp_path / "empty.png"))], info)


# ---- pictures of more than 8 bits (finding 3) ---------------------------------------------------------------------


def test_16_bit_and_float_images_are_scaled_as_the_converters_decode_them(tmp_path):
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    got = read_media(tmp_path / "g16.png").frames[0].permute(1, 2, 0).numpy()
    # the converters pass a PNG through and OpenCV decodes it: the same pixels
    assert np.array_equal(got, cv2.imread(str(tmp_path / "g16.png"), cv2.IMREAD_COLOR_RGB))
    assert np.array_equal(got[..., 0], (ramp >> 8).astype(np.uint8))
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    assert np.array_equal(read_media(tmp_path / "g16.tif").frames[0, 0].numpy(), (ramp >> 8).astype(np.uint8))
    unit = (ramp / 65535).astype(np.float32)
    Image.fromarray(unit).save(tmp_path / "f.tif")
    got = read_media(tmp_path / "f.tif").frames[0, 0].numpy().astype(int)
    assert np.abs(got - np.round(unit * 255)).max() <= 1 and got.max() == 255 and got.min() == 0


# ---- frames folders (findings 4, 5, 6, 11, 12) --------------------------------------------------------------------


def test_frames_play_in_frame_number_order_and_hidden_files_are_skipped(tmp_path):
    folder = tmp_path / "numbering"
    folder.mkdir()
    for i in range(1, 13):
        Image.fromarray(grey_frame(10 * i)).save(folder / f"frame_{i}.png")
    Image.fromarray(grey_frame(255)).save(folder / ".thumb.png")  # an editor's thumbnail
    (folder / "._frame_1.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)  # macOS AppleDouble twin
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 40)
    info = probe_media(folder)
    assert info.num_frames == 12 and media_warnings(info) == []
    media = read_media(folder, [0, 1, 2, 9], info)
    assert media.names == ["frame_1", "frame_2", "frame_3", "frame_10"]
    assert [int(f[0, 0, 0]) for f in media.frames] == [10, 20, 30, 100]


def test_gif_frames_are_read_and_other_files_are_named_in_a_warning(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, ext in enumerate(["jpg", "png", "JPG", "webp", "gif"]):
        Image.fromarray(grey_frame(40 * i + 20)).save(folder / f"{i:05d}.{ext}")
    (folder / "notes.txt").write_text("shot on a phone")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 16)
    (folder / "sub.jpg").mkdir()
    info = probe_media(folder)
    assert info.num_frames == 5
    media = read_media(folder, info=info)
    assert media.names[-1] == "00004" and abs(int(media.frames[-1, 0, 0, 0]) - 180) <= 2
    (line,) = media_warnings(info)
    assert "--media" in line and "skipped 2 file(s)" in line and "Thumbs.db, notes.txt" in line


def test_a_multi_page_image_warns_that_only_its_first_page_is_read(tmp_path):
    pages = [Image.fromarray(grey_frame(50 * i)) for i in range(1, 4)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    info = probe_media(tmp_path / "pages.tif")
    assert (info.kind, info.num_frames) == ("image", 1)
    (line,) = media_warnings(info)
    assert "pages.tif" in line and "holds 3 pages" in line and "only the first" in line


def test_two_frames_of_one_name_are_refused_naming_both(tmp_path, capsys):
    folder = tmp_path / "dup"
    folder.mkdir()
    Image.fromarray(grey_frame(10)).save(folder / "00000.jpg")
    Image.fromarray(grey_frame(20)).save(folder / "00000.png")
    Image.fromarray(grey_frame(30)).save(folder / "00001.png")
    with pytest.raises(PredictInputError, match=r"--media: .*dup' holds frames 00000.jpg and 00000.png of the same"):
        probe_media(folder)
    (tmp_path / "model").mkdir()  # exists: the media is refused before any model is loaded
    argv = ["--model", str(tmp_path / "model"), "--media", str(folder), "--text", "hi", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --media:") and "00000.jpg and 00000.png" in line


# ---- files without a suffix, MJPEG with EXIF (findings 8, 9) --------------------------------------------------------


def test_a_file_without_suffix_is_sniffed_by_pillow_first(tmp_path):
    Image.fromarray(grey_frame(90)).save(tmp_path / "noext", format="PNG")
    info = probe_media(tmp_path / "noext")
    assert (info.kind, info.num_frames, info.fps) == ("image", 1, None)
    stored = np.full((H, W, 3), 40, np.uint8)
    stored[0:16, 0:16] = (240, 40, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo", format="JPEG", exif=exif, quality=95)
    photo = read_media(tmp_path / "photo")
    assert photo.info.kind == "image" and photo.size == (W, H) and photo.meta["exif_orientation"] == {"00000": 6}
    got = photo.frames[0].permute(1, 2, 0).numpy().astype(float)
    assert np.abs(got - np.rot90(stored, k=-1)).mean() < 4  # upright, as a viewer shows it
    frames = [Image.fromarray(grey_frame(40 * i)) for i in range(1, 5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.gif")
    assert (probe_media(tmp_path / "anim.gif").kind, probe_media(tmp_path / "anim.gif").num_frames) == ("video", 4)
    assert probe_media(tmp_path / "still.gif").kind == "image"
    with av.open(str(tmp_path / "clip"), "w", format="mp4") as c:  # an mp4 without a suffix stays a video
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(3):
            for pk in s.encode(av.VideoFrame.from_ndarray(grey_frame(50 * i), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    assert (probe_media(tmp_path / "clip").kind, probe_media(tmp_path / "clip").num_frames) == ("video", 3)


def mjpeg_exif_avi(path, n: int, orientation: int | None = None) -> np.ndarray:
    """An MJPEG AVI whose JPEG frames carry an EXIF block (a camera's); returns the stored frame."""
    stored = np.full((H, W, 3), 80, np.uint8)
    stored[0:16, 0:16] = (230, 30, 30)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
        for i in range(n):
            im = Image.fromarray(stored)
            exif = im.getexif()
            exif[0x010F] = "CameraMaker"
            if orientation:
                exif[0x0112] = orientation
            buf = io.BytesIO()
            im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
            packet = av.Packet(buf.getvalue())
            packet.stream, packet.pts, packet.dts = s, i, i
            packet.time_base = fractions.Fraction(1, 10)
            c.mux(packet)
    return stored


def test_mjpeg_frames_carrying_exif_decode(tmp_path):
    stored = mjpeg_exif_avi(tmp_path / "cam.avi", 6)
    info = probe_media(tmp_path / "cam.avi")
    assert (info.kind, info.num_frames, info.height, info.width) == ("video", 6, H, W)
    media = read_media(tmp_path / "cam.avi", [0, 5], info)
    assert np.abs(media.frames[1].permute(1, 2, 0).numpy().astype(float) - stored).mean() < 4
    # a camera that stores its turn in the EXIF (FFmpeg reads it as the frame's display rotation)
    stored = mjpeg_exif_avi(tmp_path / "turned.avi", 3, orientation=6)
    turned = read_media(tmp_path / "turned.avi")
    assert turned.info.orientation == 6 and turned.size == (W, H)
    got = turned.frames[0].permute(1, 2, 0).numpy().astype(float)
    assert np.abs(got - np.rot90(stored, k=-1)).mean() < 4


class _Unreadable:
    """A decoded frame whose side data PyAV cannot name (as with FFmpeg 8's EXIF side data)."""

    def __init__(self, frame):
        self.rotation = frame.rotation

    @property
    def side_data(self):
        raise ValueError("31 is not a valid Type")


@pytest.mark.parametrize("rotation", [0, 90, -90, 180])
def test_orientation_without_side_data_names_comes_from_the_rotation(tmp_path, rotation):
    with av.open(str(tmp_path / "r.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.set_display_rotation(rotation)
        for pk in s.encode(av.VideoFrame.from_ndarray(grey_frame(80), format="rgb24")):
            c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    with av.open(str(tmp_path / "r.mp4")) as c:
        frame = next(c.decode(c.streams.video[0]))
        assert _frame_orientation(_Unreadable(frame)) == _frame_orientation(frame)


# ---- outputs: the sequence folder and the animation's rate (findings 7, 15) -----------------------------------------


def prediction(media) -> Prediction:
    """A turn's result with one object on every frame (no model)."""
    m = torch.zeros(len(media.frame_ids), *media.size, dtype=torch.bool)
    m[:, 10:20, 10:20] = True
    return Prediction("ok", "t", "t", {0: m}, {0: m}, media, [0], list(range(len(media.frame_ids))), [])


def test_the_sequence_folder_is_the_folder_name_never_empty(tmp_path, monkeypatch):
    folder = tmp_path / "seq.v2"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(grey_frame(40 + i)).save(folder / f"{i:05d}.png")
    monkeypatch.chdir(folder)
    run = write_outputs(prediction(read_media(".")), tmp_path / "out_dot")
    assert run["files"]["annotations"] == ["Annotations/seq.v2/00000.png", "Annotations/seq.v2/00001.png"]
    assert (tmp_path / "out_dot" / "Annotations" / "seq.v2" / "00001.png").is_file()
    monkeypatch.chdir(tmp_path)
    run = write_outputs(prediction(read_media("seq.v2/")), tmp_path / "out_named")
    assert run["files"]["annotations"][0] == "Annotations/seq.v2/00000.png"
    assert sequence_name(MediaInfo("clip.final.mp4", "video", 2, H, W)) == "clip.final"
    assert sequence_name(MediaInfo("/", "frames", 2, H, W)) == "media"
    assert sequence_name(MediaInfo("<tensor>", "video", 2, H, W)) == "media"


def test_the_overlay_animation_lasts_as_long_as_the_video(tmp_path):
    with av.open(str(tmp_path / "long.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(60):
            for pk in s.encode(av.VideoFrame.from_ndarray(grey_frame(i * 4), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    media = read_media(tmp_path / "long.mp4", [0, 12, 24, 36, 48, 59])
    write_outputs(prediction(media), tmp_path / "out")
    with av.open(str(tmp_path / "out" / "overlay.mp4")) as c:
        s = c.streams.video[0]
        assert s.frames == 6 and float(s.duration * s.time_base) == pytest.approx(2.0, abs=0.05)
    with Image.open(tmp_path / "out" / "overlay.gif") as gif:
        assert gif.info["duration"] == pytest.approx(333, abs=10)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["media"]["fps"] == 30.0
    assert overlay_fps(media.info, 6) == pytest.approx(3.0)
    assert overlay_fps(MediaInfo("f", "frames", 9, H, W), 3) == 4.0  # no rate of its own: 4 frames a second


def test_a_decompression_bomb_is_too_large_to_decode_safely(tmp_path, monkeypatch):
    Image.fromarray(grey_frame(10)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 4)  # over twice the limit: Pillow refuses it
    with pytest.raises(PredictInputError, match=r"--media: .*big.png' is too large to decode safely"):
        probe_media(tmp_path / "big.png")


# ---- frames given in memory (API finding F4) ----------------------------------------------------------------------


def test_tensor_media_errors_name_the_problem():
    with pytest.raises(PredictInputError, match=r"kind: got 'image' for 4 frames, expected 'video' \(or one frame\)"):
        media_from_tensor(torch.zeros(4, 3, H, W, dtype=torch.uint8), kind="image")
    with pytest.raises(PredictInputError, match=r"media: got 0 frames .*expected >= 1"):
        media_from_tensor(torch.zeros(0, 3, H, W, dtype=torch.uint8))
    with pytest.raises(PredictInputError, match=r"media: got a \(4, 3, 48, 64\) float32 tensor, expected .* uint8"):
        media_from_tensor(torch.zeros(4, 3, H, W))
    assert media_from_tensor(torch.zeros(1, 3, H, W, dtype=torch.uint8), kind="image").kind == "image"
    assert media_from_tensor(torch.zeros(1, 3, H, W, dtype=torch.uint8), kind="video").info.kind == "video"


def test_hidden_output_names_never_appear(tmp_path):
    """A folder holding only a hidden image is a folder without frames (not a frame named '.thumb')."""
    folder = tmp_path / "only_hidden"
    folder.mkdir()
    Image.fromarray(grey_frame(10)).save(folder / ".thumb.png")
    with pytest.raises(PredictInputError, match="without frame images"):
        probe_media(folder)
