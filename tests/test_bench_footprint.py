"""`python -m pixelqa.bench footprint`: its measure of a process's peak memory, and its whole run at a tiny size."""

from __future__ import annotations

import re

import pytest

from pixelqa import bench
from pixelqa.benchmarks.footprint import peak_rss

MB = 2**20


def test_peak_rss_is_the_childs_own_peak():
    big = peak_rss(["-c", f"b = b'x' * {300 * MB}; del b"])  # 300 MB written, then freed
    small = peak_rss(["-c", "pass"])
    # the peak, not the memory at exit; and the child's own: not this test process's (torch and more, forked with)
    assert big >= 300 * MB > 50 * MB > small, (big, small)
    assert peak_rss(["-m", "json.tool", "--help"]) < 50 * MB  # a module with arguments
    with pytest.raises(RuntimeError, match="exited with 3: boom"):
        peak_rss(["-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])


@pytest.mark.slow
def test_the_benchmark_runs_predict_and_prints_its_figures(capsys):
    # a tiny size and one object: the run's code paths (a difference of 8 frames of 64x48 is below a process's noise)
    bench.main(["footprint", "--sizes", "64x48", "--frames", "4,12", "--objects", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    runs = [line for line in lines if re.fullmatch(r"64x48 (4|12) frames, 1 object\(s\): peak \d+\.\d\d GiB", line)]
    assert len(runs) == 2
    assert re.fullmatch(r"footprint_64x48_bytes_per_pixel_one_object: -?\d+\.\d\d \(the check assumes 10\)", lines[-2])
    assert re.fullmatch(r"footprint_measured_vs_assumed_worst: \d+\.\d\dx", lines[-1])


def test_the_figures_are_the_peaks_differences_a_pixel(capsys, monkeypatch):
    import pixelqa.benchmarks.footprint as footprint

    def peaks(args: list[str]) -> int:  # MB of a run by its frame count and prompts (as predict was given them)
        frames = int(args[args.index("--media") + 1].rsplit("_", 1)[1].removesuffix(".mp4"))
        objects = args.count("--point") + args.count("--box")
        return {(10, 1): 500, (30, 1): 524, (10, 2): 510, (30, 2): 545}[frames, objects] * MB

    monkeypatch.setattr(footprint, "peak_rss", peaks)
    bench.main(["footprint", "--sizes", "128x64", "--frames", "10,30"])
    lines = capsys.readouterr().out.strip().splitlines()
    pixels = 20 * 64 * 128  # 20 frames more
    one, two = 24 * MB / pixels, 35 * MB / pixels  # by hand: 153.6 and 224.0 bytes a pixel
    assert lines[-3] == f"footprint_128x64_bytes_per_pixel_one_object: {one:.2f} (the check assumes 10)"
    assert lines[-2] == f"footprint_128x64_bytes_per_pixel_per_further_object: {two - one:.2f} (the check assumes 5)"
    assert lines[-1] == f"footprint_measured_vs_assumed_worst: {max(one / 10, two / 15):.2f}x"
    assert (one, two - one) == (153.6, 70.4)
