"""`python -m pixelqa.bench metrics`: times ours at one thread and torch's default, and refuses bad thread lists."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("skimage", reason="scikit-image (dev extra) is needed for the DAVIS reference port")

from pixelqa.benchmarks import metrics as bench  # noqa: E402 (after the importorskip guards)


def test_metrics_bench_reports_each_thread_count(capsys, monkeypatch) -> None:
    small = bench.synthetic_clip
    monkeypatch.setattr(bench, "synthetic_clip", lambda: small(frames=6, height=120, width=200))
    before = torch.get_num_threads()
    bench.main(["--synthetic", "--repeats", "1", "--threads", "1,2"])
    assert torch.get_num_threads() == before
    lines = capsys.readouterr().out.splitlines()
    figures = dict(line.split(": ", 1) for line in lines if "_time_ratio_" in line or "_speedup_" in line)
    for name in ("jaccard", "boundary_f", "jandf"):
        for label in ("threads1", "threads2"):
            key = next(k for k in figures if k.startswith(f"{name}_time_ratio_{label}"))
            assert 0 < float(figures[key]) < 100


@pytest.mark.parametrize("threads", ["x", "1,-1", ""])
def test_metrics_bench_rejects_bad_thread_lists(capsys, threads: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--synthetic", "--threads", threads])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--threads must be") and repr(threads) in err and "\n" not in err
