"""predict refuses, before reading a frame, a run whose frames and masks would not fit in the available memory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelqa.predict import __main__ as cli
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.footprint import check_footprint, frames_bytes


def test_the_estimate_is_5_bytes_a_pixel_and_5_more_per_object():
    assert frames_bytes(1800, (1080, 1920), 1) == 1800 * 1080 * 1920 * (5 + 5)  # a minute of 1080p: 37 GB
    assert frames_bytes(10, (4, 5), 3) == 10 * 20 * (5 + 15)
    assert frames_bytes(10, (4, 5), 0) == frames_bytes(10, (4, 5), 1)  # an answer's <|seg|> makes one at least


def test_the_refusal_names_the_frames_that_fit():
    per_frame = frames_bytes(1, (1080, 1920), 1)
    available = 100 * per_frame
    check_footprint(100, (1080, 1920), 1, available)  # fits exactly: no error
    check_footprint(10**6, (1080, 1920), 1, None)  # unknown memory (not Linux): no check
    with pytest.raises(PredictInputError) as info:
        check_footprint(101, (1080, 1920), 1, available)
    said = str(info.value)
    assert said.startswith("--max-frames: reading 101 frames of 1920x1080 with 1 object(s) to segment needs about ")
    assert "pass --max-frames 80 or fewer (or --no-memory-check to try anyway)" in said  # 80 % of what is there
    with pytest.raises(PredictInputError, match="free memory or use a smaller video"):
        check_footprint(5, (1080, 1920), 1, per_frame // 2)


def test_available_memory_is_meminfos_less_a_cgroup_limit(tmp_path):
    from pixelqa.predict.footprint import cgroup_available, meminfo_available

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:        1000 kB\nMemAvailable:   2000000 kB\n")
    assert meminfo_available(str(meminfo)) == 2000000 * 1024
    assert meminfo_available(str(tmp_path / "missing")) is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("1000\n")
    assert cgroup_available(str(v2)) is None  # no limit
    (v2 / "memory.max").write_text("5000\n")
    assert cgroup_available(str(v2)) == 4000
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("10\n")
    assert cgroup_available(str(v1)) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("100\n")
    assert cgroup_available(str(v1)) == 90


@pytest.fixture
def frames_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(12):
        Image.fromarray(np.full((48, 64, 3), 20 * t, np.uint8)).save(folder / f"{t:05d}.png")
    return folder


def test_the_cli_refuses_before_reading_frames_or_loading_the_model(frames_folder, tmp_path, capsys, monkeypatch):
    import pixelqa.predict.loading as loading

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded")

    def no_read(*_a, **_k):
        raise AssertionError("the frames were read")

    per_frame = frames_bytes(1, (48, 64), 2)
    monkeypatch.setattr(cli, "available_bytes", lambda: 10 * per_frame)  # room for 10 of the 12 frames
    monkeypatch.setattr(cli, "read_media", no_read)
    monkeypatch.setattr(loading, "load_model", no_model)
    argv = ["--model", "tiny", "--media", str(frames_folder), "--point", "5,5", "--box", "1,1,9,9,3", "--text", "hi"]
    argv += ["--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: --max-frames: reading 12 frames of 64x48 with 2 object(s) to segment needs about "
        f"{12 * per_frame / 2**30:.1f} GiB for frames and masks (besides the model), and {10 * per_frame / 2**30:.1f} "
        "GiB is available; pass --max-frames 8 or fewer (or --no-memory-check to try anyway)"
    ]
    # what it advises gets past the check (to the frames' reading), and so does --no-memory-check
    for extra in (["--max-frames", "8"], ["--no-memory-check"]):
        with pytest.raises(AssertionError, match="the frames were read"):
            cli.main([*argv, *extra])
