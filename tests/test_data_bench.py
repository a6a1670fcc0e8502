"""`python -m pixelqa.bench data` on a converter's real-format fixture: same pass on both sides, ratios printed."""

from __future__ import annotations

from fixtures_video import build_revos

from pixelqa.benchmarks.data import main as bench_data
from pixelqa.data.shards import build_shards


def test_data_benchmark_runs_on_a_fixture_source(tmp_path, capsys):
    build_revos(tmp_path / "revos")
    expected = build_shards("revos", tmp_path / "revos", tmp_path / "ref", "train", progress=False)["num_samples"]
    bench_data(["--source", "revos", "--root", str(tmp_path / "revos"), "--workers", "0", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    # The headline figures close the output, one `name: value` per line, after the pass summary.
    assert lines[-6] == f"revos/train, {expected} samples"
    tail = dict(line.split(": ") for line in lines[-5:])
    assert list(tail) == [
        "build_samples_per_s_w1",
        "build_samples_per_s_w2",
        "loader_samples_per_s_w0",
        "baseline_samples_per_s_w0",
        "loader_vs_baseline_w0",
    ]
    values = {k: float(v) for k, v in tail.items()}
    assert min(values.values()) > 0
    ratio = values["loader_samples_per_s_w0"] / values["baseline_samples_per_s_w0"]
    assert abs(values["loader_vs_baseline_w0"] - ratio) < 0.01  # printed with 2 decimals
