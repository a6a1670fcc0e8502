"""predict's reading of a user's own video: phone rotation (display matrix) and truncated webm / mkv files.

Real files are written by PyAV (libavformat's mp4 / webm / matroska muxers), so the display matrix and the declared
durations are those FFmpeg itself writes and reads back.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.media import display_orientation, media_warnings, orient, probe_media, read_media
from pixelqa.predict.prompts import check_prompts, parse_prompt

H, W = 48, 64  # the stored (landscape) frame
RED = (230, 30, 30)
ONE = 1 << 16  # 1.0 in the display matrix's 16.16 fixed point
W_ONE = 1 << 30  # its last element, 2.30 fixed point


def stored_frame() -> np.ndarray:
    """A grey (H, W) frame with a red block in its stored top-left corner."""
    a = np.full((H, W, 3), 90, np.uint8)
    a[0:16, 0:16] = RED
    return a


def write_clip(path, n: int, codec: str = "mpeg4", rotation: int | None = None, audio_s: float = 0.0) -> None:
    """An n-frame, 10 fps clip; `rotation`: PyAV's display rotation (degrees counter-clockwise, as FFmpeg reads it
    back); `audio_s`: an audio stream of that many seconds beside the video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("libopus", rate=48000) if audio_s else None
        for _ in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored_frame(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            for k in range(int(audio_s * 50)):  # 20 ms frames of silence
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
                samples.sample_rate, samples.pts = 48000, k * 960
                for packet in sound.encode(samples):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


def red_corner(frame: np.ndarray) -> str:
    """Which corner of an (h, w, 3) frame holds the red block: tl, tr, bl or br."""
    h, w = frame.shape[:2]
    corners = {
        "tl": frame[2:10, 2:10],
        "tr": frame[2:10, w - 10 : w - 2],
        "bl": frame[h - 10 : h - 2, 2:10],
        "br": frame[h - 10 : h - 2, w - 10 : w - 2],
    }
    red = [k for k, c in corners.items() if c[..., 0].mean() > 180 and c[..., 1].mean() < 90]
    assert len(red) == 1, f"expected one red corner, got {red}"
    return red[0]


# ---- rotation -----------------------------------------------------------------------------------------------------


def test_display_matrix_maps_to_the_exif_orientation_players_apply():
    # FFmpeg's av_display_rotation_get reads these as -90 / 90 / 180 degrees counter-clockwise; its own
    # autorotation (fftools) turns -90 clockwise (transpose=clock), 90 counter-clockwise, 180 upside down
    assert display_orientation([0, ONE, 0, -ONE, 0, 0, 0, 0, W_ONE]) == 6  # a phone's portrait clip
    assert display_orientation([0, -ONE, 0, ONE, 0, 0, 0, 0, W_ONE]) == 8
    assert display_orientation([-ONE, 0, 0, 0, -ONE, 0, 0, 0, W_ONE]) == 3
    assert display_orientation([ONE, 0, 0, 0, ONE, 0, 0, 0, W_ONE]) == 1
    assert display_orientation([-ONE, 0, 0, 0, ONE, 0, 0, 0, W_ONE]) == 2  # mirrored left-right
    assert display_orientation([0, -ONE, 0, -ONE, 0, 0, 0, 0, W_ONE]) == 7  # 90 then mirrored
    # rotations off the quarter turns go to the nearest one (cos 80 = 0.17, sin 80 = 0.98)
    cos, sin = int(0.17 * ONE), int(0.98 * ONE)
    assert display_orientation([cos, sin, 0, -sin, cos, 0, 0, 0, W_ONE]) == 6
    # the turns are EXIF's: each equal to Pillow's exif_transpose of a picture carrying that orientation
    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        image = Image.fromarray(stored)
        image.info["exif"] = exif.tobytes()
        shown = np.asarray(ImageOps.exif_transpose(image))
        assert np.array_equal(orient(stored, orientation), shown), orientation


@pytest.mark.parametrize(
    "rotation, orientation, corner",
    [(-90, 6, "tr"), (90, 8, "bl"), (180, 3, "br"), (None, 1, "tl"), (0, 1, "tl")],
)
def test_a_rotated_video_is_read_upright(tmp_path, rotation, orientation, corner):
    # stored top-left: a quarter turn clockwise (a phone's -90) puts it top-right, counter-clockwise bottom-left
    path = tmp_path / "phone.mp4"
    write_clip(path, 4, rotation=rotation)
    info = probe_media(path)
    turned = orientation in (6, 8)
    assert info.orientation == orientation
    assert (info.height, info.width) == ((W, H) if turned else (H, W))
    media = read_media(path, info=info)
    assert media.size == (info.height, info.width) and media.frames.shape[2:] == media.size
    for frame in media.frames.permute(0, 2, 3, 1).numpy():
        assert red_corner(frame) == corner
    assert media_warnings(info) == []


def test_prompts_on_a_rotated_video_are_in_the_upright_frame(tmp_path):
    write_clip(tmp_path / "phone.mp4", 3, rotation=-90)
    info = probe_media(tmp_path / "phone.mp4")
    check_prompts([parse_prompt("point", "40,60"), parse_prompt("box", "30,0,47,20")], info)  # upright: 48 x 64
    with pytest.raises(PredictInputError, match="outside the 48x64 frame"):
        check_prompts([parse_prompt("point", "60,40")], info)  # inside the stored frame only
    media = read_media(tmp_path / "phone.mp4", [1], info)
    assert media.frames.shape == (1, 3, W, H) and media.frame_ids == [1]


# ---- truncated webm / mkv -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec, suffix", [("libvpx", "webm"), ("mpeg4", "mkv")])
def test_truncated_webm_and_mkv_are_reported(tmp_path, codec, suffix):
    whole = tmp_path / f"whole.{suffix}"
    write_clip(whole, 30, codec=codec)
    info = probe_media(whole)
    assert info.declared_frames is None and info.num_frames == 30  # no frame count: the duration speaks
    assert info.declared_seconds == pytest.approx(3.0) and info.decoded_seconds == pytest.approx(3.0)
    assert media_warnings(info) == []
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])  # a download cut short
    info = probe_media(cut)
    assert 0 < info.num_frames < 30 and info.decoded_seconds < 2.5
    (line,) = media_warnings(info)
    assert f"cut.{suffix}" in line and "declares 3.00 s of video" in line
    assert f"end at {info.decoded_seconds:.2f} s" in line and f"the {info.num_frames} that decode" in line
    assert len(read_media(cut, info=info).frame_ids) == info.num_frames  # used as far as it decodes


def test_an_intact_webm_with_longer_audio_is_not_reported(tmp_path):
    # the file's duration is the audio's 4 s; the video track declares its own 3 s
    write_clip(tmp_path / "talk.webm", 30, codec="libvpx", audio_s=4.0)
    info = probe_media(tmp_path / "talk.webm")
    assert info.num_frames == 30 and info.declared_seconds == pytest.approx(3.0)
    assert media_warnings(info) == []
    with av.open(str(tmp_path / "talk.webm")) as container:
        assert container.duration / 1e6 > 3.5  # not vacuous: the whole file does run longer than its video


def test_a_video_damaged_in_the_middle_is_used_up_to_the_damage_with_a_warning(tmp_path):
    import random

    write_clip(tmp_path / "whole.mkv", 30)
    data = bytearray((tmp_path / "whole.mkv").read_bytes())
    rng = random.Random(0)
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(rng.randrange(256) for _ in range(400))  # garbage inside a packet
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    with av.open(str(bad)) as container, pytest.raises(av.error.InvalidDataError):
        for _ in container.decode(container.streams.video[0]):  # not vacuous: FFmpeg does stop on this file
            pass
    info = probe_media(bad)
    assert 0 < info.num_frames < 30 and info.decode_error is not None
    (line,) = media_warnings(info)
    assert "bad.mkv" in line and f"after frame {info.num_frames - 1}" in line and "Invalid data" in line
    media = read_media(bad, info=info)
    assert media.frame_ids == list(range(info.num_frames))
    assert red_corner(media.frames[-1].permute(1, 2, 0).numpy()) == "tl"  # the frames before it are sound
    # damage before any frame decodes stays a refusal naming the file
    head = tmp_path / "head.mkv"
    head.write_bytes(bytes(data[:200]) + bytes(rng.randrange(256) for _ in range(2000)))
    with pytest.raises(PredictInputError, match="head.mkv"):
        probe_media(head)
