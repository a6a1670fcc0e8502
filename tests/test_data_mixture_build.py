"""`python -m pixelqa.data mixture ... --out`: every source of a mixture built, spec written, resumable."""

from __future__ import annotations

import json
import re

import pytest
from fixtures_video import build_revos

from pixelqa.data.__main__ import main as data_main
from pixelqa.data.mixture import MixtureEntry, build_mixture, write_mixture_spec


def test_mixture_builds_every_source_and_writes_its_spec(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "shards"
    build_revos(raw / "revos")
    mix = tmp_path / "mini.yaml"
    mix.write_text(
        "sources:\n  - {name: synthetic, split: val, repeat: 2}\n  - {name: revos, split: train, repeat: 5}\n"
    )
    data_main(["mixture", str(mix), "--root", str(raw), "--out", str(out), "--max-samples", "6", "--quiet"])
    spec = json.loads((out / "mixture-mini.json").read_text())
    rows = {r["name"]: r for r in spec["sources"]}
    synth = json.loads((out / "synthetic" / "val" / "manifest.json").read_text())
    revos = json.loads((out / "revos" / "train" / "manifest.json").read_text())
    assert rows["synthetic"]["samples"] == synth["num_samples"] == 6
    assert rows["revos"]["samples"] == revos["num_samples"] > 0
    assert rows["revos"]["effective"] == 5 * revos["num_samples"] and rows["revos"]["origin"] == "manifest"
    assert spec["total_effective"] == 2 * 6 + 5 * revos["num_samples"]
    # A rerun resumes: complete shards are kept byte for byte.
    tars = sorted((out / "revos" / "train").glob("*.tar"))
    before = [t.read_bytes() for t in tars]
    data_main(["mixture", str(mix), "--root", str(raw), "--out", str(out), "--max-samples", "6", "--quiet"])
    assert [t.read_bytes() for t in tars] == before


def test_missing_raw_source_fails_or_is_skipped(tmp_path, capsys):
    entries = [MixtureEntry("revos", "train", 5.0), MixtureEntry("synthetic", "val", 1.0)]
    with pytest.raises(FileNotFoundError, match=r"mixture: raw files missing for 1 of 2 sources.*source revos"):
        build_mixture(entries, tmp_path / "raw", tmp_path / "out", max_samples=2, progress=False)
    assert not (tmp_path / "out").exists()  # checked up front: not even the buildable source was started
    built = build_mixture(entries, tmp_path / "raw", tmp_path / "out", on_error="skip", max_samples=2, progress=False)
    assert list(built) == ["synthetic/val"] and "skipped revos/train" in capsys.readouterr().out
    spec = json.loads(write_mixture_spec("m", entries, tmp_path / "out").read_text())
    assert [r["origin"] for r in spec["sources"]] == ["paper", "manifest"]


def test_unregistered_source_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"sources \['refcoco\+'\] have no registered converter"):
        build_mixture([MixtureEntry("refcoco+")], tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mixture_passes_the_frame_codec_to_every_source(tmp_path):
    mix = tmp_path / "one.yaml"
    mix.write_text("sources:\n  - {name: synthetic, split: val}\n")
    out = tmp_path / "shards"
    args = ["mixture", str(mix), "--root", str(tmp_path), "--out", str(out), "--max-samples", "3", "--quiet"]
    data_main([*args, "--frame-codec", "ppm"])
    manifest = json.loads((out / "synthetic" / "val" / "manifest.json").read_text())
    assert manifest["config"]["frame_codec"] == "ppm"
    with pytest.raises(SystemExit) as bad:  # argparse: not a codec
        data_main([*args, "--frame-codec", "webp"])
    assert bad.value.code == 2


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"num_samples": 6, "shards": [', r"corrupt shard manifest \(Expecting"),  # truncated write
        ('["not", "an", "object"]', r"corrupt shard manifest \(got a JSON list\)"),
        ('{"shards": []}', r"corrupt shard manifest \(got num_samples=None\)"),
        (b"\xff\xfe\x00garbage", r"corrupt shard manifest \("),
    ],
)
def test_mixture_table_names_a_corrupt_manifest_and_exits_2(tmp_path, capsys, text, reason):
    mix = tmp_path / "one.yaml"
    mix.write_text("sources:\n  - {name: synthetic, split: val, repeat: 2}\n")
    manifest = tmp_path / "shards" / "synthetic" / "val" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as exit_info:
        data_main(["mixture", str(mix), "--shards", str(tmp_path / "shards")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {manifest}: ") and re.search(reason, err)
    assert "expected a JSON object with an integer num_samples" in err


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3", "sft1m"])
def test_paper_stage_mixtures_leave_the_demo_source_out(stage, capsys):
    from pixelqa.data.mixture import load_mixture

    names = [e.name for e in load_mixture(stage)]
    assert "synthetic" not in names and names
    if stage in ("stage3", "sft1m"):
        assert len(names) == 28  # paper Table 12
        data_main(["mixture", f"recipe={stage}"])
        out = capsys.readouterr().out
        assert "total effective samples per epoch: 5,940,000" in out and "synthetic" not in out
        assert "note: llava_mix665k: image records only" in out  # the count leaves the text-only records out


def test_mixture_with_shards_flags_missing_and_short_sources(tmp_path, capsys):
    mix = tmp_path / "two.yaml"
    mix.write_text(
        "sources:\n  - {name: synthetic, split: val, repeat: 1}\n  - {name: revos, split: train, repeat: 5}\n"
        "  - {name: groundmore, split: train, repeat: 3}\n"
    )
    out = tmp_path / "shards"
    for name, n in (("synthetic", 200), ("groundmore", 40)):  # synthetic val: all 200 (card); GroundMoRe: 40 of 5,600
        split = "val" if name == "synthetic" else "train"
        manifest = out / name / split / "manifest.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"num_samples": n}))
    data_main(["mixture", str(mix), "--shards", str(out)])
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert lines["source"].split()[-2:] == ["expected", "status"]
    assert re.search(r"\s200 manifest .*\s200 ok 100%$", lines["synthetic"])
    assert re.search(r"\s40 manifest .*\s5,600 short 1%$", lines["groundmore"])
    assert re.search(r"\s29,000 paper .*\s29,000 missing$", lines["revos"])
    assert lines["missing"].endswith(": revos") and lines["short"].endswith(": groundmore")
    entries = [MixtureEntry("revos", "train", 5.0), MixtureEntry("groundmore", "train", 3.0)]
    spec = json.loads(write_mixture_spec("two", entries, out).read_text())
    assert [(r["built"], r["expected"], r["status"]) for r in spec["sources"]] == [
        (None, 29_000, "missing"),
        (40, 5_600, "short"),
    ]
