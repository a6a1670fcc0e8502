"""`python -m pixelqa.data` commands and the data benchmark, end to end on small synthetic builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pixelqa.data.__main__ import main
from pixelqa.data.mixture import load_mixture, mixture_table, parse_mixture


def test_build_inspect_stats(tmp_path: Path, capsys):
    main(
        [
            "build",
            "synthetic",
            "--out",
            str(tmp_path),
            "--split",
            "val",
            "--max-samples",
            "26",
            "--max-count",
            "10",
            "--quiet",
        ]
    )
    assert "synthetic/val: 26 samples in 3 shards" in capsys.readouterr().out
    folder = tmp_path / "synthetic" / "val"
    assert sorted(p.name for p in folder.glob("*.tar")) == [f"synthetic-val-{i:06d}.tar" for i in range(3)]
    main(["inspect", str(folder), "--n", "3", "--out", str(tmp_path / "ov")])
    out = capsys.readouterr().out
    assert out.count("synthetic-val-") >= 3 and "assistant:" in out
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 3 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    main(["stats", str(tmp_path)])
    out = capsys.readouterr().out
    assert "samples: 26" in out and "res" in out


def test_module_entry_point(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "pixelqa.data", "sources"], capture_output=True, text=True, check=True)
    assert "synthetic" in r.stdout.split()


def test_mixture_from_recipe_and_cards(capsys):
    entries = load_mixture("stage3")  # from the cards (no recipes/data/stage3.yaml)
    assert entries and not any(e.name == "synthetic" for e in entries)  # the demo's data is no paper source
    rows = mixture_table(
        parse_mixture({"sources": [{"name": "refcoco", "repeat": 10}, {"name": "reasonseg", "repeat": 10}]})
    )
    # paper Table 12: RefCOCO 17K x10 and ReasonSeg 1.6K x10 -> shares 170 / 186 and 16 / 186
    assert rows[0]["share"] == pytest.approx(170 / 186) and rows[1]["share"] == pytest.approx(16 / 186)
    with pytest.raises(ValueError, match="repeat"):
        parse_mixture({"sources": [{"name": "x", "repeat": 0}]})
    main(["mixture", "recipe=stage3"])
    assert "synthetic" not in capsys.readouterr().out


def test_benchmark_prints_headline_lines(capsys):
    from pixelqa.benchmarks.data import main as bench

    bench(["--samples", "24", "--workers", "0", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    names = [ln.split(":")[0] for ln in lines[-5:]]
    assert names == [
        "build_samples_per_s_w1",
        "build_samples_per_s_w2",
        "loader_samples_per_s_w0",
        "baseline_samples_per_s_w0",
        "loader_vs_baseline_w0",
    ]
    assert all(float(ln.split(":")[1]) > 0 for ln in lines[-5:])


def test_stats_reports_the_builds_rejects_apart_from_read_damage(tmp_path: Path, capsys):
    import numpy as np
    from fixtures_image import H, W, build_ade20k, write_image, write_label_png

    raw, out = tmp_path / "raw", tmp_path / "shards"
    build_ade20k(raw)
    write_image(raw / "images" / "training" / "ADE_train_00000002.jpg", seed=3)
    write_label_png(raw / "annotations" / "training" / "ADE_train_00000002.png", np.zeros((H, W), dtype=np.uint8))
    write_image(raw / "images" / "training" / "ADE_train_00000003.jpg", seed=4)
    write_label_png(raw / "annotations" / "training" / "ADE_train_00000003.png", np.zeros((H, 3), dtype=np.uint8))
    main(["build", "ade20k", "--root", str(raw), "--out", str(out), "--on-error", "skip", "--quiet"])
    assert "1 samples in 1 shards" in capsys.readouterr().out
    main(["stats", str(out)])
    text = capsys.readouterr().out
    assert "samples: 1" in text and "damaged records skipped: 0 (while reading the shards)" in text
    assert "rejected by the build: 1  skipped by the build (nothing to ask): 1" in text
    table = text.split("skipped by the build (nothing to ask): 1", 1)[1]  # the samples table has an ade20k row too
    (row,) = [ln for ln in table.splitlines() if ln.startswith("ade20k ")]
    assert row.split()[:4] == ["ade20k", "train", "1", "1"]
    assert str(out / "ade20k" / "train" / "manifest.json") in row
    assert "ADE_train_00000003" in text and "label size" in text  # the examples: the reject first, then the skip
    assert "ADE_train_00000002: " in text and "no class to ask for" in text
    # a build that wrote no shard (every item rejected or skipped); stats still shows what its manifest records
    (raw / "annotations" / "training" / "ADE_train_00000001.png").unlink()
    main(["build", "ade20k", "--root", str(raw), "--out", str(tmp_path / "none"), "--on-error", "skip", "--quiet"])
    capsys.readouterr()
    main(["stats", str(tmp_path / "none")])
    text = capsys.readouterr().out
    assert "samples: 0" in text and "rejected by the build: 1  skipped by the build (nothing to ask): 1" in text


def test_stats_without_rejects_prints_no_reject_table(tmp_path: Path, capsys):
    main(["build", "synthetic", "--out", str(tmp_path), "--split", "val", "--max-samples", "4", "--quiet"])
    capsys.readouterr()
    main(["stats", str(tmp_path / "synthetic" / "val" / "synthetic-val-000000.tar")])
    text = capsys.readouterr().out
    assert "rejected by the build: 0" in text and "build rejects" not in text


def test_build_and_mixture_help_name_the_launcher_arguments(capsys):
    from pixelqa.data.__main__ import main

    for command in ("build", "mixture"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "launcher=subprocess|slurm [launcher.KEY=VALUE ...]" in out and "docs/cluster.md" in out
