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


def _flip_frame_byte(folder: Path) -> tuple[str, int]:
    """Flip one pixel byte of the victim's first frame (the JSON stays valid); returns (key, record offset)."""
    tar = folder / SHARD
    key, start, members = spans(tar)[VICTIM]
    frame = next(ext for ext in members if ext != "json")
    data = bytearray(tar.read_bytes())
    data[members[frame][1] + 100] ^= 0x01
    tar.write_bytes(bytes(data))
    return key, start


@pytest.mark.parametrize("checksum", ["xxh3_64", "crc32"])
def test_a_flipped_pixel_is_caught_by_the_index_checksum_of_either_format(intact, tmp_path, caplog, checksum):
    import json

    from pixelqa.data.shard_reader import make_index

    root = tmp_path / "shards"
    shutil.copytree(intact, root)
    folder = root / "synthetic" / "val"
    index = make_index(folder / SHARD, checksum=checksum)
    assert (index["format"], index.get("checksum")) == ((2, "xxh3_64") if checksum == "xxh3_64" else (1, None))
    index_path(folder / SHARD).write_text(json.dumps(index))  # format 1: what builds wrote before format 2
    assert json.loads(index_path(intact / "synthetic" / "val" / SHARD).read_text())["checksum"] == "xxh3_64"
    clean = make_dataset([intact / "synthetic" / "val"], train=False)
    assert [s.key for s in make_dataset([folder], train=False)] == [s.key for s in clean]
    key, start = _flip_frame_byte(folder)
    caplog.set_level(logging.WARNING)
    ds = make_dataset([folder], train=False)
    keys = [s.key for s in ds]
    assert key not in keys and len(keys) == N - 1 and ds.damage.count == 1
    what = "XXH3_64" if checksum == "xxh3_64" else "CRC-32"
    assert f"{SHARD} at byte {start}: record {key!r}: {what} differs from the index" in caplog.text


def test_an_index_with_an_unknown_checksum_is_ignored_and_the_shard_scanned(intact, tmp_path, caplog):
    import json

    root = tmp_path / "shards"
    shutil.copytree(intact, root)
    folder = root / "synthetic" / "val"
    ip = index_path(folder / SHARD)
    index = json.loads(ip.read_text())
    ip.write_text(json.dumps({**index, "checksum": "md7"}))
    caplog.set_level(logging.WARNING)
    ds = make_dataset([folder], train=False)
    assert len(list(ds)) == N and ds.damage.count == 0
    assert "checksum 'md7'" in caplog.text and "scanning the shard instead" in caplog.text
    with pytest.raises(ValueError, match="checksum: got 'md7'"):
        from pixelqa.data.shard_reader import make_index

        make_index(folder / SHARD, checksum="md7")


def test_evaluation_frames_are_views_of_the_shard_yet_samples_pickle_and_outlive_the_pass(intact):
    import pickle

    import numpy as np

    folder = intact / "synthetic" / "val"
    samples = list(make_dataset([folder], train=False))
    frame = samples[0].media.frames[0]
    assert isinstance(frame, memoryview) and frame.readonly  # no copy before decoding
    back = pickle.loads(pickle.dumps(samples[0]))
    assert all(isinstance(f, bytes) for f in back.media.frames) and back == samples[0]
    np.testing.assert_array_equal(back.decode_frames(), samples[0].decode_frames())  # the map outlived the pass
    back.validate(check_frames=True)
    samples[0].validate(check_frames=True)
    # the training stream keeps records in a shuffle buffer: it copies, so no shard map stays open behind it
    first = next(iter(make_dataset([folder], train=True)))
    assert all(isinstance(f, bytes) for f in first.media.frames)


def test_random_access_reads_views_of_a_cached_map_and_sees_a_rebuilt_shard(intact, tmp_path):
    import os
    import pickle

    import numpy as np

    from pixelqa.data.shard_reader import open_shard, read_sample

    root = tmp_path / "shards"
    shutil.copytree(intact, root)
    folder = root / "synthetic" / "val"
    ref = open_shard(folder / SHARD).refs[0]
    sample = read_sample(ref)
    pixels = sample.decode_frames()
    assert isinstance(sample.media.frames[0], memoryview) and sample.media.frames[0].readonly
    assert pickle.loads(pickle.dumps(sample)) == sample
    other = folder / "synthetic-val-000002.tar"  # rebuilt as builds write: another file renamed over it
    for src, dst in ((index_path(other), index_path(folder / SHARD)), (other, folder / SHARD)):
        shutil.copyfile(src, dst.with_suffix(".new"))
        os.replace(dst.with_suffix(".new"), dst)
    fresh = read_sample(open_shard(folder / SHARD).refs[0])
    assert fresh.key == read_sample(open_shard(other).refs[0]).key != sample.key
    np.testing.assert_array_equal(sample.decode_frames(), pixels)  # the old sample still holds the old file's map


def test_a_source_whose_every_record_is_damaged_is_one_recipe_error(intact, tmp_path):
    from pixelqa.config import RecipeError
    from pixelqa.train.datamodule import DamagedSourceError, TrainBatches

    root = tmp_path / "shards"
    shutil.copytree(intact, root)
    folder = root / "synthetic" / "val"
    for tar in sorted(folder.glob("*.tar")):  # garble every record's JSON (index files still match the spans)
        data = bytearray(tar.read_bytes())
        for _, _, members in spans(tar):
            at = members["json"][1]
            data[at : at + 4] = b"\xff{,]"
        tar.write_bytes(bytes(data))
    index = SourceIndex(root, "synthetic", "val", damage=DamageLog())
    with pytest.raises(DamagedSourceError) as err:
        next(iter(TrainBatches([index], lambda samples: samples, 4, seed=1)))
    assert isinstance(err.value, RecipeError) and "\n" not in str(err.value)
    assert f"every record in {folder} is damaged" in str(err.value)


def test_fit_strict_on_a_damaged_record_is_one_data_error_line(tmp_path, capsys):
    # ShardDamageError (strict mode) reached the user of fit and evaluate as a traceback with status 1
    from pixelqa import fit

    root = tmp_path / "shards"
    build_shards("synthetic", ".", root, "train", max_samples=16, progress=False)
    (tar,) = sorted((root / "synthetic" / "train").glob("*.tar"))
    data = bytearray(tar.read_bytes())
    key, _, members = spans(tar)[VICTIM]
    data[members["json"][1] + 20] ^= 0xFF
    tar.write_bytes(bytes(data))
    args = [
        "recipe=stage3",
        f"data.shards={root}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "tracking=none",
        "eval.after_fit=false",
        f"output_dir={tmp_path / 'run'}",
        "--strict",
    ]
    with pytest.raises(SystemExit) as err:
        fit.main(args)
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert err.value.code == 2 and "Traceback" not in stderr, stderr
    assert last.startswith("data error: damaged shard (strict mode): ") and repr(key) in last
