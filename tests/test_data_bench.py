"""`python -m pixelqa.bench data` on a converter's real-format fixture: same pass on both sides, ratios printed."""

from __future__ import annotations

import json

import pytest
from fixtures_video import build_revos

from pixelqa.benchmarks.data import RawJsonDataset, TensorStream, check_same, write_raw_copy
from pixelqa.benchmarks.data import main as bench_data
from pixelqa.data import synthetic
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


def test_loader_and_baseline_give_identical_tensors_and_a_swapped_frame_or_mask_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "FRAME_EXT", "jpg")  # the bench's default: frames as real releases ship them
    build_shards("synthetic", ".", tmp_path / "shards", "train", max_samples=24, progress=False)
    shard_dir = tmp_path / "shards" / "synthetic" / "train"
    annotation = write_raw_copy(shard_dir, tmp_path / "raw")
    items = json.loads(annotation.read_text())
    assert items[0]["frames"][0].endswith(".jpg")
    assert check_same(TensorStream(shard_dir, 8), RawJsonDataset(annotation, 8)) == 24
    assert check_same(TensorStream(shard_dir, 3), RawJsonDataset(annotation, 3)) == 24  # both pick the same frames

    video = next(i for i, it in enumerate(items) if len(it["frames"]) >= 2 and it["masks"])
    masks_ok = items[video]["masks"][0]
    items[video]["masks"][0] = masks_ok[1:] + masks_ok[:1]  # the object's masks one frame off
    annotation.write_text(json.dumps(items))
    with pytest.raises(RuntimeError, match=f"sample {video}: loader masks"):
        check_same(TensorStream(shard_dir, 8), RawJsonDataset(annotation, 8))
    items[video]["masks"][0] = masks_ok
    items[video]["frames"][0] = items[video]["frames"][1]  # the next frame's file in place of the first
    annotation.write_text(json.dumps(items))
    with pytest.raises(RuntimeError, match=f"sample {video}: loader frames"):
        check_same(TensorStream(shard_dir, 8), RawJsonDataset(annotation, 8))


def test_ppm_shards_are_checked_against_the_released_jpeg_files(capsys):
    # the baseline keeps the JPEG files while the loader reads ppm shards; check_same (inside) demands equal tensors
    bench_data(["--samples", "16", "--workers", "0", "--repeats", "1", "--shard-codec", "ppm"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-6] == "synthetic/train 112x112 JPG frames, shards with ppm frames, 16 samples"
    figures = dict(line.split(": ", 1) for line in lines if ": " in line)
    assert float(figures["shard_bytes_vs_released"]) > 2  # raw pixels against JPEG
    assert float(figures["loader_vs_baseline_w0"]) > 0


def test_batched_passes_count_every_sample_through_packed_items(tmp_path):
    from pixelqa.benchmarks.data import drain

    build_shards("synthetic", ".", tmp_path / "shards", "train", max_samples=10, max_count=4, progress=False)
    shard_dir = tmp_path / "shards" / "synthetic" / "train"
    annotation = write_raw_copy(shard_dir, tmp_path / "raw")
    for workers in (0, 2):  # 10 samples in packed items of 4: 4 + 4 + 2 (a worker's share may end short)
        assert drain(TensorStream(shard_dir, 8), workers, batch=4)[0] == 10
        assert drain(RawJsonDataset(annotation, 8), workers, batch=4)[0] == 10
    assert drain(RawJsonDataset(annotation, 8), 0)[0] == 10


def test_batch_below_one_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_data(["--batch", "0"])
    assert exit_info.value.code == 2 and "--batch: got 0, expected an integer >= 1" in capsys.readouterr().err
