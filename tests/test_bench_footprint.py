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
    # a tiny size: the run's code paths only (a difference of 8 frames of 64x48 is below the noise of a process)
    bench.main(["footprint", "--sizes", "64x48", "--frames", "4,12", "--objects", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    runs = [line for line in lines if re.fullmatch(r"64x48 (4|12) frames, [12] object\(s\): peak \d+\.\d\d GiB", line)]
    assert len(runs) == 4
    assert re.fullmatch(r"footprint_64x48_bytes_per_pixel_one_object: -?\d+\.\d\d \(the check assumes 10\)", lines[-3])
    assert re.fullmatch(
        r"footprint_64x48_bytes_per_pixel_per_further_object: -?\d+\.\d\d \(the check assumes 5\)", lines[-2]
    )
    assert re.fullmatch(r"footprint_measured_vs_assumed_worst: \d+\.\d\dx", lines[-1])
