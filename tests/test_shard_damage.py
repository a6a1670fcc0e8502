"""Damaged shards: truncated, a flipped header at and inside a record boundary, garbled JSON.

Every reader (the streaming loader, the training/validation data module, `inspect` and `stats`) skips exactly the
damaged records, logs a warning naming the shard and the byte offset, and counts them; strict mode makes the
damage fatal. The truth (record spans, which records a damage hits) comes from `tarfile` on the intact shard.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

import pytest

from pixelqa.data.inspect_shards import iter_samples, shard_stats
from pixelqa.data.loader import make_dataset
from pixelqa.data.shard_reader import DamageLog, ShardDamageError, index_path
from pixelqa.data.shards import build_shards
from pixelqa.train.datamodule import EvalBatches, SourceIndex

N, PER_SHARD, VICTIM = 24, 8, 3  # 3 shards of 8; the damage lands in shard 1, record 3 (or from it on)
SHARD = "synthetic-val-000001.tar"


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("intact")
    build_shards("synthetic", ".", out, "val", max_samples=N, max_count=PER_SHARD, progress=False)
    return out


def spans(tar: Path) -> list[tuple[str, int, dict[str, tuple[int, int]]]]:
    """(key, offset of its first header, {suffix: (header offset, data offset)}) per record, via tarfile."""
    out: list = []
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, m.offset, {}))
            out[-1][2][ext] = (m.offset, m.offset_data)
    return out


def damage(intact: Path, tmp: Path, kind: str, with_index: bool) -> tuple[Path, int, int]:
    """A copy of the shard root with `kind` damage in SHARD; returns (root, records lost, byte offset reported)."""
    root = tmp / "shards"
    shutil.copytree(intact, root)
    folder = root / "synthetic" / "val"
    if not with_index:
        for p in folder.glob("*.idx.json"):
            p.unlink()
    tar = folder / SHARD
    data = bytearray(tar.read_bytes())
    recs = spans(tar)
    key, start, members = recs[VICTIM]
    if kind == "truncated":  # cut in the middle of the victim's JSON: it and every later record of the shard are lost
        cut = members["json"][1] + 20
        tar.write_bytes(bytes(data[:cut]))
        return root, len(recs) - VICTIM, start
    if kind == "header_at_boundary":  # the record's first header (its name field)
        data[start + 3] ^= 0x55
        offset = start
    elif kind == "header_inside":  # the header of its last member, inside the record
        data[members["json"][0] + 3] ^= 0x55
        offset = start
    elif kind == "garbled_json":
        at = members["json"][1]
        data[at : at + 4] = b"\xff{,]"
        offset = start
    else:
        raise AssertionError(kind)
    tar.write_bytes(bytes(data))
    return root, 1, offset


KINDS = ["truncated", "header_at_boundary", "header_inside", "garbled_json"]


@pytest.mark.parametrize("with_index", [True, False], ids=["index", "no-index"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_skips_and_counts_the_damaged_records(intact, tmp_path, caplog, kind, with_index):
    root, lost, offset = damage(intact, tmp_path, kind, with_index)
    folder = root / "synthetic" / "val"
    all_keys = [k for p in sorted((intact / "synthetic" / "val").glob("*.tar")) for k, _, _ in spans(p)]
    victims = set(all_keys[PER_SHARD + VICTIM : PER_SHARD + VICTIM + lost])
    want = [k for k in all_keys if k not in victims]

    caplog.set_level(logging.WARNING)
    ds = make_dataset([folder], train=False)  # the streaming loader
    assert [s.key for s in ds] == want and ds.damage.count == lost
    assert f"{SHARD} at byte {offset}" in caplog.text

    log = DamageLog()  # the data module (fit's validation, evaluate's passes)
    index = SourceIndex(root, "synthetic", "val", damage=log)
    batches = EvalBatches([index], lambda samples: [s.key for s in samples], 5, seed=0)
    assert [k for b in batches for k in b] == want and log.count == lost
    assert batches.expected == N  # what the build wrote: a report of scored / expected shows the shortfall

    log = DamageLog()  # inspect
    assert [s.key for s in iter_samples([folder], log)] == want and log.count == lost
    st = shard_stats([folder])  # stats reads the JSON members only
    assert st["samples"] == len(want) and st["damaged"] == lost


def test_intact_shards_report_no_damage_and_a_wrong_count_would_show(intact, tmp_path):
    folder = intact / "synthetic" / "val"
    ds = make_dataset([folder], train=False)
    assert len(list(ds)) == N and ds.damage.count == 0 and index_path(folder / SHARD).is_file()
    root, lost, _ = damage(intact, tmp_path, "garbled_json", True)
    assert lost == 1 and shard_stats([root])["damaged"] == 1  # the same check does see damage


def test_training_stream_replaces_a_damaged_record_deterministically(intact, tmp_path, caplog):
    from pixelqa.train.datamodule import TrainBatches

    root, _, _ = damage(intact, tmp_path, "garbled_json", True)
    log = DamageLog()
    index = SourceIndex(root, "synthetic", "val", damage=log)
    keys = lambda samples: [s.key for s in samples]  # noqa: E731
    first = [b for _, b in zip(range(12), TrainBatches([index], keys, 4, seed=1))]
    again = [b for _, b in zip(range(6), TrainBatches([index], keys, 4, seed=1, start_batch=6))]
    assert first[6:] == again and log.count == 1  # 48 slots over 24 records: the victim is drawn, and replaced
    victim = spans(root / "synthetic" / "val" / SHARD)[VICTIM][0]
    assert victim not in {k for b in first for k in b}


def test_strict_mode_makes_damage_fatal(intact, tmp_path, capsys, caplog):
    root, _, _ = damage(intact, tmp_path, "header_inside", True)
    folder = root / "synthetic" / "val"
    with pytest.raises(ShardDamageError, match=f"{SHARD} at byte"):
        list(make_dataset([folder], train=False, strict=True))
    from pixelqa.data.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["stats", str(folder), "--strict"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and SHARD in err and err.count("\n") == 1
    main(["inspect", str(folder), "--n", "30"])
    assert "damaged records skipped: 1" in capsys.readouterr().out and f"{SHARD} at byte" in caplog.text


@pytest.mark.slow
def test_fit_and_evaluate_count_damage_and_report_scored_over_expected(tmp_path, capsys):
    from pixelqa import evaluate, fit
    from pixelqa.train.datamodule import build_synthetic

    build_synthetic(tmp_path / "shards", "train", 16)
    build_synthetic(tmp_path / "shards", "val", 16)  # 2 shards of 8
    tar = tmp_path / "shards" / "synthetic" / "val" / SHARD
    key, _, members = spans(tar)[VICTIM]
    data = bytearray(tar.read_bytes())
    data[members["json"][1] : members["json"][1] + 4] = b"\xff{,]"
    tar.write_bytes(bytes(data))
    args = [
        "recipe=stage3",
        f"data.shards={tmp_path / 'shards'}",
        "data.batch_size=2",
        "data.val_batch_size=4",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        f"output_dir={tmp_path / 'run'}",
        "tracking=none",
    ]
    metrics = fit.run(args)
    assert metrics["data/damaged_records"] == 1 and "data/damaged_records: 1" in capsys.readouterr().out
    ev = evaluate.run([*args, "ckpt=last"])
    assert ev["synthetic/samples_scored"] == 15 and ev["synthetic/samples_expected"] == 16
    assert ev["data/damaged_records"] == 1 and "scored 15 / 16 samples" in capsys.readouterr().out
