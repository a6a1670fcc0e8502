"""Crafted shard records (a key that is a path, JSON nested past the parsers, a frame whose header lies about its
size): every reader counts such a record as damaged, like any other damage, and goes on; `inspect --out` writes
nothing outside --out. A crafted record comes with a matching index file and manifest entry (an attacker writes
those too: the loader then skips `validate()`, so the reader's own checks must catch it) or without an index file
(the shard is scanned). The rest of the shard reads as usual.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import pytest

from pixelqa.data.inspect_shards import inspect_shards, iter_samples, overlay_path, shard_stats
from pixelqa.data.loader import make_dataset
from pixelqa.data.shard_reader import RecordDamaged, index_path, open_shard, read_sample
from pixelqa.data.shards import build_shards, iter_records, sha256_file, write_index

N, PER_SHARD, VICTIM = 16, 8, 2  # 2 shards of 8; the crafted record is record 2 of shard 1
SHARD = "synthetic-val-000001.tar"


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("intact")
    build_shards("synthetic", ".", out, "val", max_samples=N, max_count=PER_SHARD, progress=False)
    return out


def png_header_bomb(side: int) -> bytes:
    """A valid PNG of side x side black pixels: a few KB that decode to side * side * 3 bytes."""
    rows = zlib.compress(b"".join(b"\0" + bytes(side * 3) for _ in range(side)), 9)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def edit_json(**fields) -> Callable[[dict], None]:
    """A record change that sets top-level fields of its JSON member (the tar member names stay)."""

    def change(record: dict) -> None:
        d = json.loads(record["json"])
        d.update(fields)
        record["json"] = json.dumps(d).encode()

    return change


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _deep_json(record: dict) -> None:
    record["json"] = b"[" * 100_000 + b"]" * 100_000  # orjson refuses; the standard parser would recurse


def _png_bomb(record: dict) -> None:
    record["003.png"] = png_header_bomb(3000)  # the JSON says 112 x 112; decoding would take 27 MB


def _honest_bomb(record: dict) -> None:
    """Every frame a real PNG of 9500 x 9500 (263 KB, 271 MB decoded) and the JSON saying so: past the pixel cap."""
    d = json.loads(record["json"])
    d["media"]["size"] = [9500, 9500]
    record["json"] = json.dumps(d).encode()
    bomb = honest_png_bomb()
    for name in [k for k in record if k.endswith(".png") or k.endswith(".jpg")]:
        del record[name]
    for i in range(d["media"]["num_frames"]):
        record[f"{i:03d}.{d['media']['ext']}"] = bomb


@lru_cache(maxsize=1)
def honest_png_bomb() -> bytes:
    return png_header_bomb(9500)  # 9500 * 9500 = 90.25 M pixels > MAX_FRAME_PIXELS (89.5 M)


CHANGES: dict[str, Callable[[dict], None]] = {
    "key_relative": edit_json(key="../../escaped"),
    "key_absolute": edit_json(key="/tmp/escaped_abs"),  # replaced later by the test's own tmp path
    "key_newline": edit_json(key="ok\n"),  # `$` would accept it; the check is a full match
    "deep_json": _deep_json,
    "deep_meta": edit_json(meta={"x": nested(600)}),  # orjson parses it; pickling a batch would recurse out
    "png_bomb": _png_bomb,
    "honest_bomb": _honest_bomb,  # header and JSON agree: refused by the pixel cap, before any decoding
}


def craft(intact: Path, tmp: Path, change: Callable[[dict], None], with_index: bool) -> tuple[Path, str, int]:
    """A copy of the shard root whose SHARD has record VICTIM rewritten by `change`; returns (folder, its key,
    its byte offset). with_index: the index file and the manifest entry are rewritten to match (the checksum then
    passes); otherwise the index file is removed."""
    root = tmp / "shards"
    shutil.copytree(intact, root)
    folder = root / "synthetic" / "val"
    tar = folder / SHARD
    records = list(iter_records([tar]))
    change(records[VICTIM])
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for record in records:
            for ext, data in record.items():
                if ext.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{record['__key__']}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    manifest = folder / "manifest.json"
    m = json.loads(manifest.read_text())
    entry = next(s for s in m["shards"] if s["name"] == SHARD)
    entry.update(bytes=tar.stat().st_size, sha256=sha256_file(tar))
    manifest.write_text(json.dumps(m))
    if with_index:
        write_index(tar)
    else:
        index_path(tar).unlink()
    key = records[VICTIM]["__key__"]
    with tarfile.open(tar) as tf:
        offset = next(info.offset for info in tf.getmembers() if info.name.startswith(key + "."))
    return folder, key, offset


@pytest.mark.parametrize("with_index", [True, False], ids=["index", "no-index"])
@pytest.mark.parametrize("kind", list(CHANGES))
def test_every_reader_counts_a_crafted_record_as_damaged(intact, tmp_path, caplog, kind, with_index):
    change = CHANGES[kind]
    if kind == "key_absolute":
        change = edit_json(key=str(tmp_path / "escaped_abs"))
    folder, victim, offset = craft(intact, tmp_path, change, with_index)
    want = [s.key for s in iter_samples([folder])]
    assert len(want) == N - 1 and victim not in want
    caplog.set_level(logging.WARNING)

    st = shard_stats([folder])  # stats: JSON and frame files (and now frame headers), no pixels
    assert st["samples"] == N - 1 and st["damaged"] == 1

    ds = make_dataset([folder], train=False)  # the loader: with the index, validate() is skipped
    assert [s.key for s in ds] == want and ds.damage.count == 1
    assert f"{SHARD} at byte {offset}: record {victim!r}" in caplog.text

    ref = next(r for r in open_shard(folder / SHARD).refs if r.key == victim)  # random access (fit's data module)
    with pytest.raises(RecordDamaged, match=f"at byte {offset}"):
        read_sample(ref)

    out = tmp_path / "a" / "b" / "overlays"
    written = inspect_shards([folder], n=N, out=out)  # renders every intact sample
    assert len(written) == N - 1 and all(p.parent == out for p in written)
    pngs = sorted(tmp_path.rglob("*.png"))
    assert pngs == sorted(written)  # nothing written outside --out


def test_inspect_reports_the_damage_it_skipped(intact, tmp_path, capsys):
    from pixelqa.data.__main__ import main

    folder, _, _ = craft(intact, tmp_path, edit_json(key="../../escaped"), True)
    out = tmp_path / "a" / "b" / "ov"
    main(["inspect", str(folder), "--n", str(N), "--out", str(out)])
    assert "damaged records skipped: 1" in capsys.readouterr().out
    pngs = list(tmp_path.rglob("*.png"))
    assert len(pngs) == N - 1 and all(p.parent == out for p in pngs)  # none at out/../../escaped.png


def test_a_record_that_fails_validation_with_a_type_error_is_damage_not_a_crash(intact, tmp_path):
    def unhashable_object_id(record: dict) -> None:
        d = json.loads(record["json"])
        d["prompts"][0]["object_id"] = [1]  # `in self.objects` raises TypeError inside validate()
        record["json"] = json.dumps(d).encode()

    folder, victim, _ = craft(intact, tmp_path, unhashable_object_id, False)
    ds = make_dataset([folder], train=False)  # no index: the loader validates
    keys = [s.key for s in ds]
    assert victim not in keys and len(keys) == N - 1 and ds.damage.count == 1
    written = inspect_shards([folder], n=N, out=tmp_path / "ov")  # inspect validates what it renders
    assert len(written) == N - 1


def test_overlay_names_stay_inside_out(tmp_path):
    out = tmp_path / "ov"
    for key in ["../../x", "/etc/x", "a/../../b", "..", "", "x\n", "a.b"]:
        path = overlay_path(out, key)
        assert path.parent == out and path.name.endswith(".png") and ".." not in path.name, key
    assert overlay_path(out, "synthetic-val-0000010") == out / "synthetic-val-0000010.png"
