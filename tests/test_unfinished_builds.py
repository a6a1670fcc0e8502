"""Shard folders whose build has not finished, and resumes onto other shards: fit refuses the first shards of a
stopped `data build` (naming the command that finishes it), `data stats` / `inspect` mark them INCOMPLETE, and the
data-stream fingerprint holds each training source's shards, so a resume after a rebuild is refused naming the
source, while a checkpoint of the previous version (no shard entries) still resumes, with a note."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixelqa import fit
from pixelqa.config import RecipeError, load_recipe, to_object
from pixelqa.data import shards as sh
from pixelqa.data.__main__ import main as data_main
from pixelqa.train.datamodule import check_sources
from pixelqa.train.guards import stream_changes


def stopped_build(out: Path, split: str, samples: int, per_shard: int, after_shards: int) -> Path:
    """A `data build synthetic` stopped after `after_shards` complete shards, as a kill leaves it: those shards with
    their index files, the progress file recording them, the lock file, the open shard's .partial, no manifest."""
    real = sh._write_json
    saves = []

    def stop_after(path: Path, data: dict) -> None:
        real(path, data)
        saves.append(path)
        if len(saves) == after_shards:
            raise KeyboardInterrupt  # Ctrl-C or a kill right after the progress save

    sh._write_json = stop_after
    try:
        with pytest.raises(KeyboardInterrupt):
            sh.build_shards(
                "synthetic", ".", out, split=split, max_samples=samples, max_count=per_shard, progress=False
            )
    finally:
        sh._write_json = real
    folder = out / "synthetic" / split
    assert len(list(folder.glob("*.tar"))) == after_shards and not list(folder.glob("manifest*.json"))
    assert (folder / ".progress-node000-of001.json").is_file()
    return folder


def _data(shards: Path, *extra: str):
    return to_object(
        load_recipe(["recipe=stage3", f"data.shards={shards}", "data.build_if_missing=false", *extra])
    ).data


def test_fit_refuses_the_shards_of_a_stopped_build_naming_the_command_that_finishes_it(tmp_path, capsys):
    shards = tmp_path / "shards"
    sh.build_shards("synthetic", ".", shards, split="val", max_samples=8, max_count=4, progress=False)
    folder = stopped_build(shards, "train", samples=40, per_shard=5, after_shards=2)  # 10 of 40 samples
    finish = (
        f"python -m pixelqa.data build synthetic --root RAW --out {shards} --split train --max-count 5 --max-samples 40"
    )
    args = [
        "recipe=stage3",
        f"data.shards={shards}",
        "data.build_if_missing=false",
        "trainer.max_steps=1",
        "tracking=none",
        "eval.after_fit=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(SystemExit) as err:
        fit.main(args)
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1, msg
    assert msg.startswith(f"recipe error: data.sources[0] (synthetic/train): the shards in {folder} are an unfinished ")
    assert ".progress-node000-of001.json is there" in msg and msg.strip().endswith(f"finish it with: {finish}")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    # a kill between a shard's rename and its progress save: shards, no progress file, no manifest
    (folder / ".progress-node000-of001.json").unlink()
    with pytest.raises(RecipeError, match=r"unfinished build \(no manifest.json: the build that wrote them stopped"):
        check_sources(_data(shards))
    # the command printed for a stopped build finishes it (RAW: synthetic has no raw files), and fit accepts it
    again = tmp_path / "again"
    stopped = stopped_build(again, "train", samples=40, per_shard=5, after_shards=2)
    command = sh.unfinished_build(stopped, again).command
    data_main([*command.removeprefix("python -m pixelqa.data ").split(), "--quiet"])
    assert sh.unfinished_build(stopped) is None and len(list(stopped.glob("*.tar"))) == 8
    sh.build_shards("synthetic", ".", again, split="val", max_samples=8, max_count=4, progress=False)
    check_sources(_data(again))


def test_a_node_that_has_not_finished_is_named_with_its_rank(tmp_path):
    for rank in (0, 1):
        sh.build_shards("synthetic", ".", tmp_path, "val", max_samples=4, max_count=2, node_rank=rank, num_nodes=3)
    folder = tmp_path / "synthetic" / "val"
    unfinished = sh.unfinished_build(folder)
    assert unfinished.reason == "manifest-node002-of003.json is missing: node 2 of 3 has not finished"
    assert unfinished.command.endswith("--max-count 2 --max-samples 4 --node-rank 2 --num-nodes 3")


def test_stats_and_inspect_mark_an_unfinished_build(tmp_path, capsys):
    folder = stopped_build(tmp_path, "val", samples=20, per_shard=4, after_shards=2)
    data_main(["stats", str(tmp_path)])
    out = capsys.readouterr().out
    assert "synthetic                        val                8  INCOMPLETE (build not finished)" in out
    assert f"INCOMPLETE BUILD {folder}: .progress-node000-of001.json is there" in out
    assert f"--out {tmp_path} --split val --max-count 4 --max-samples 20" in out
    assert "samples: 8 (INCOMPLETE: 1 unfinished build, see above)" in out
    data_main(["inspect", str(folder), "--n", "1"])
    assert f"INCOMPLETE BUILD {folder}" in capsys.readouterr().out
    data_main(
        ["build", "synthetic", "--out", str(tmp_path), "--split", "val"] + "--max-count 4 --max-samples 20".split()
    )
    capsys.readouterr()
    data_main(["stats", str(tmp_path)])
    assert "INCOMPLETE" not in capsys.readouterr().out


def test_an_old_checkpoint_fingerprint_without_shard_entries_is_compared_on_what_both_hold(capsys):
    old = {"seed": 0, "global_batch": 2}  # as the previous version wrote it
    now = {**old, "manifest/synthetic/train": "16 samples, shards sha256:0123456789abcdef"}
    assert stream_changes(old, now) == []
    assert (
        "not compared with the checkpoint's data-stream fingerprint: manifest/synthetic/train (not recorded"
        in capsys.readouterr().out
    )
    changed = {**now, "manifest/synthetic/train": "24 samples, shards sha256:fedcba9876543210"}
    assert stream_changes(now, changed) == [
        "manifest/synthetic/train: '16 samples, shards sha256:0123456789abcdef' -> "
        "'24 samples, shards sha256:fedcba9876543210'"
    ]


def test_a_resume_onto_rebuilt_shards_is_refused_naming_the_source(tmp_path, capsys):
    shards = tmp_path / "shards"
    base = [
        "recipe=stage3",
        f"data.shards={shards}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking=none",
        "eval.after_fit=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    fit.run([*base, "trainer.max_steps=1"])  # the synthetic shards are built on first use, after the fingerprint
    last = (tmp_path / "run" / "checkpoints" / "last.ckpt").resolve()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    entry = saved["pixelqa_stream"]["manifest/synthetic/train"]
    assert entry.startswith("16 samples, shards sha256:")  # filled in once the shards were there
    # the training source rebuilt with more samples: the same settings would read another stream
    sh.build_shards("synthetic", ".", tmp_path / "bigger", split="train", max_samples=24, max_count=2, progress=False)
    train = shards / "synthetic" / "train"
    for p in train.iterdir():
        p.unlink()
    for p in (tmp_path / "bigger" / "synthetic" / "train").iterdir():
        p.rename(train / p.name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        fit.main([*base, "trainer.max_steps=2", "ckpt=last"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1, msg
    assert (
        f"manifest/synthetic/train: '{entry}' -> '24 samples, shards sha256:" in msg and "--allow-stream-change" in msg
    )
    # a checkpoint of the previous version holds no shard entries: it resumes, and a note says what went unchecked
    del saved["pixelqa_stream"]["manifest/synthetic/train"]
    torch.save(saved, last)
    metrics = fit.run([*base, "trainer.max_steps=2", "ckpt=last"])
    assert metrics["train/steps"] == 2
    assert (
        "not compared with the checkpoint's data-stream fingerprint: manifest/synthetic/train (not recorded"
        in capsys.readouterr().out
    )


def test_evaluate_refuses_the_validation_shards_of_a_stopped_build(tmp_path, capsys):
    from pixelqa import evaluate

    shards = tmp_path / "shards"
    folder = stopped_build(shards, "val", samples=40, per_shard=5, after_shards=2)
    args = ["recipe=stage3", f"data.shards={shards}", "data.build_if_missing=false", "tracking=none"]
    with pytest.raises(SystemExit) as err:
        evaluate.main([*args, f"output_dir={tmp_path / 'run'}"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1, msg
    # refused by evaluate's own check of the benchmark's shards, before the model loads
    assert msg.startswith(f"recipe error: eval.benchmark=synthetic eval.split=val: the shards in {folder} are an unfin")
    assert "finish it with: python -m pixelqa.data build synthetic" in msg


def test_a_stopped_first_use_build_of_synthetic_shards_is_resumed_not_refused(tmp_path):
    from pixelqa.preflight import check_shards

    shards = tmp_path / "shards"
    stopped_build(shards, "val", samples=40, per_shard=5, after_shards=2)
    check_shards(_data(shards, "data.build_if_missing=true"))  # the data module's first-use build finishes it
    with pytest.raises(RecipeError, match="unfinished build"):
        check_shards(_data(shards))
