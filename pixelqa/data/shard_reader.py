"""Reading shards you can trust: every tar is checked against its manifest, damage is skipped with a counted warning.

One reader serves training (random access), evaluation (exact passes), `inspect` and `stats`:

- open: the record index comes from the index file the build wrote beside the shard (``<name>.idx.json``: per
  record its byte span, member offsets and checksum); records that reach past the end of the file are damaged
  (truncation). A shard without an index file (built before index files existed, or a bare .tar) is scanned
  header by header, each 512-byte header checked against its own checksum, resyncing after a bad one; when a
  manifest lists it, its size and SHA-256 are compared and records the scan cannot find are counted as lost.
- read: each record is checked in the shard's memory map; its checksum is verified (index files), its JSON must parse
  (and not nest deeper than the parsers go), its frames must all be there, its key must be a plain file name and
  each frame's header must give the sample's media.size (checked whether or not an index checksum matched: an index
  file can be crafted along with its shard, and a header that lies would make a decoder allocate its size). Index
  files written since format 2 use XXH3-64 (about 20 GB/s here, against 7 GB/s for zlib's CRC-32, which was the
  largest single cost of reading a sample of uncompressed frames); format 1 files (CRC-32) still read.
  A pass over a shard (`iter_shard_records`) copies each record's members out once; the evaluation stream
  (`copy=False`) and random access (`read_record`, what fit's data module uses; the last 64 shards' maps are kept)
  take the frames as read-only slices of the map instead, not copied before they are decoded.

Each damaged record is logged once as a warning naming the shard and the byte offset, and counted by a
`DamageLog`; `DamageLog(strict=True)` makes the first damage fatal (`ShardDamageError`). Reading the tar headers
ourselves (name and size fields only) is also what makes this reader fast: `tarfile` parses every field of every
header, which dominated the time per sample of small images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import xxhash

from pixelqa.data.schema import Sample

log = logging.getLogger(__name__)

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
INDEX_SUFFIX = ".idx.json"
INDEX_FORMAT = 2  # 1: per-record CRC-32; 2: the checksum named by the file's "checksum" field
INDEX_CHECKSUM = "xxh3_64"  # what new index files use
CHECKSUMS = {"crc32": zlib.crc32, "xxh3_64": xxhash.xxh3_64_intdigest}  # name -> function(buffer) -> int


class ShardDamageError(RuntimeError):
    """Damage met while reading shards in strict mode; the message names the shard, the offset and why."""


@dataclass(frozen=True)
class Damage:
    """A damaged span of a shard: where it starts, why it is unreadable, how many records it costs."""

    shard: str
    offset: int | None  # None: the whole shard (a missing file)
    reason: str
    records: int = 1

    def __str__(self) -> str:
        where = "" if self.offset is None else f" at byte {self.offset}"
        return f"{self.shard}{where}: {self.reason}"


class RecordDamaged(Exception):
    """One record could not be read intact (carries its `Damage`)."""

    def __init__(self, damage: Damage) -> None:
        super().__init__(str(damage))
        self.damage = damage


@dataclass(frozen=True)
class RecordRef:
    """Where one record lives: its byte span [start, end) in the shard, its members and (from the index) checksum."""

    shard: str
    key: str
    start: int
    end: int
    members: tuple[tuple[str, int, int], ...]  # (suffix, data offset, data size)
    digest: int | None = None  # the span's checksum from the index file; None: not indexed
    checksum: str = INDEX_CHECKSUM  # which function of CHECKSUMS made `digest`


@dataclass(frozen=True)
class ShardContents:
    """What opening a shard found: intact record references, damage, and the record count the build wrote."""

    path: str
    refs: tuple[RecordRef, ...]
    damage: tuple[Damage, ...]
    expected: int | None  # records according to the index file or manifest; None when neither exists


class DamageLog:
    """Damaged records met while reading: each is logged once (shard, byte offset, why) and counted.

    `share()` moves the count into shared memory so that DataLoader worker processes add to the parent's count.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = bool(strict)
        self.events: list[Damage] = []
        self._seen: set[tuple[str, int]] = set()
        self._shared: Any = None

    def share(self) -> DamageLog:
        """Count in shared memory (a torch tensor, which DataLoader workers inherit by handle); returns self."""
        import torch

        self._shared = torch.zeros(1, dtype=torch.int64).share_memory_()
        return self

    def report(self, damage: Damage) -> None:
        """Log and count `damage` (once per shard and offset); raise ShardDamageError in strict mode."""
        if self.strict:
            raise ShardDamageError(f"damaged shard (strict mode): {damage}")
        if (damage.shard, damage.offset) in self._seen:
            return
        self._seen.add((damage.shard, damage.offset))
        self.events.append(damage)
        if self._shared is not None:
            self._shared += damage.records  # workers rarely collide; a lost increment only under-counts a race
        log.warning("skipped damaged shard data: %s (%d record(s) lost so far)", damage, self.count)

    @property
    def count(self) -> int:
        """Records lost to damage so far (across worker processes once `share()` was called)."""
        if self._shared is not None:
            return int(self._shared.item())
        return sum(d.records for d in self.events)


# ---------------------------------------------------------------------------------------------- tar headers


def _octal(field: bytes) -> int:
    """A tar numeric field: octal text, or base-256 when the high bit of the first byte is set."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def parse_header(block: bytes) -> tuple[str, int, bytes] | None:
    """(member name, data size, type flag) of a 512-byte tar header; None when its checksum does not match."""
    try:
        stored = _octal(block[148:156])
        size = _octal(block[124:136])
    except ValueError:
        return None
    if stored != sum(block) - sum(block[148:156]) + 8 * 32:  # the checksum field counts as 8 spaces
        return None
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    try:
        return name.decode("utf-8"), size, block[156:157]
    except UnicodeDecodeError:
        return None


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's grouping: key = the base name up to its first dot, suffix = the rest."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return (name[: len(name) - len(base)] + key), ext


def scan_tar(buf: Any, shard: str) -> tuple[list[RecordRef], list[Damage]]:
    """Records of a tar image (bytes or mmap) found by reading its headers; damaged spans are returned, not raised.

    After a header whose checksum fails, the scan moves on block by block to the next valid header. The record
    around a bad header is damaged when the next valid header continues it (same key) or when a record ends up
    without its json member; a record that lost a trailing frame is caught when it is read.
    """
    refs: list[RecordRef] = []
    damage: list[Damage] = []
    n = len(buf)
    group: dict | None = None
    gap: int | None = None  # offset of the first bad header since the last good one
    long_name: str | None = None

    def close() -> None:
        if group is None:
            return
        exts = {m[0] for m in group["members"]}
        after = f" (bad tar header at byte {group['gap']})" if group.get("gap") is not None else ""
        bad = group["bad"] or (None if "json" in exts else "record has no json member" + after)
        if bad:
            damage.append(Damage(shard, group["start"], f"record {group['key']!r}: {bad}"))
        else:
            refs.append(RecordRef(shard, group["key"], group["start"], group["end"], tuple(group["members"])))

    pos = 0
    while pos + BLOCK <= n:
        block = bytes(buf[pos : pos + BLOCK])
        if block == _ZERO_BLOCK and gap is None:
            break  # end-of-archive marker
        header = parse_header(block)
        if header is None:
            gap = pos if gap is None else gap
            if group is not None and group.get("gap") is None:
                group["gap"] = gap
            pos += BLOCK
            continue
        name, size, flag = header
        data, end = pos + BLOCK, pos + BLOCK + _padded(size)
        if flag == b"L":  # GNU long name: the data holds the next member's name
            long_name = bytes(buf[data : data + size]).split(b"\0", 1)[0].decode("utf-8", "replace")
            pos = end
            continue
        if flag not in (b"0", b"\0", b""):
            pos = end  # directories, links, pax headers: nothing a record holds
            continue
        if long_name is not None:
            name, long_name = long_name, None
        key, ext = _split_name(name)
        start = pos
        if group is None or group["key"] != key:
            close()
            group = {"key": key, "start": pos, "members": [], "bad": None, "end": end}
        elif gap is not None:
            group["bad"] = f"bad tar header at byte {gap} inside the record"
        if gap is not None and group["start"] == start:
            group["start"] = gap  # the record began with the bad header: report it from there
        gap = None
        if data + size > n:
            group["bad"] = f"truncated: member {ext!r} needs bytes up to {data + size}, the shard ends at {n}"
            break
        group["members"].append((ext, data, size))
        group["end"] = min(end, n)
        pos = end
    if gap is not None and group is not None:
        group["bad"] = group["bad"] or f"bad tar header at byte {gap}; nothing readable after it"
    elif gap is not None:
        damage.append(Damage(shard, gap, "bad tar header; nothing readable after it"))
    close()
    return refs, damage


# ---------------------------------------------------------------------------------------------- index files


def index_path(shard: str | Path) -> Path:
    """The index file of a shard: ``<name>.idx.json`` beside ``<name>.tar``."""
    p = Path(shard)
    return p.with_name(p.name[: -len(".tar")] + INDEX_SUFFIX if p.name.endswith(".tar") else p.name + INDEX_SUFFIX)


def make_index(shard: str | Path, checksum: str = INDEX_CHECKSUM) -> dict:
    """The index of an intact, freshly written shard: per record [key, start, end, checksum, members]."""
    if checksum not in CHECKSUMS:
        raise ValueError(f"checksum: got {checksum!r}, expected one of {sorted(CHECKSUMS)}")
    path = Path(shard)
    data = path.read_bytes()
    refs, damage = scan_tar(data, str(path))
    if damage:
        raise ValueError(f"index of {path}: expected an intact shard, found {damage[0]}")
    view, fn = memoryview(data), CHECKSUMS[checksum]
    records = [[r.key, r.start, r.end, fn(view[r.start : r.end]), [list(m) for m in r.members]] for r in refs]
    index = {"format": INDEX_FORMAT, "checksum": checksum, "shard": path.name, "bytes": len(data), "records": records}
    if checksum == "crc32":  # what format-1 readers understand
        del index["checksum"]
        index["format"] = 1
    return index


def _load_index(path: Path, expected_bytes: int | None) -> list[RecordRef] | None:
    """Record references from the index file (None when it is missing, unreadable or of another shard build)."""
    ip = index_path(path)
    if not ip.is_file():
        return None
    try:
        d = json.loads(ip.read_text())
        fmt = d.get("format")
        checksum = "crc32" if fmt == 1 else d.get("checksum")
        if fmt not in (1, INDEX_FORMAT) or checksum not in CHECKSUMS:
            raise ValueError(f"format {fmt!r} with checksum {checksum!r}, expected format 1 or {INDEX_FORMAT}")
        if expected_bytes is not None and d["bytes"] != expected_bytes:
            raise ValueError(f"bytes {d.get('bytes')}, expected {expected_bytes}")
        return [
            RecordRef(str(path), k, int(s), int(e), tuple((m[0], int(m[1]), int(m[2])) for m in mem), int(c), checksum)
            for k, s, e, c, mem in d["records"]
        ]
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the index file %s (%s); scanning the shard instead", ip, err)
        return None


@lru_cache(maxsize=256)
def _manifest_entries(folder: str, stamp: tuple) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for mp in sorted(Path(folder).glob("manifest*.json")):
        try:
            for s in json.loads(mp.read_text()).get("shards", []):
                entries[s["name"]] = s
        except (ValueError, KeyError, TypeError) as err:
            log.warning("unreadable manifest %s: %s", mp, err)
    return entries


def manifest_entry(shard: str | Path) -> dict | None:
    """The manifest's record of a shard ({name, samples, bytes, sha256, ...}), None when no manifest lists it."""
    p = Path(shard).resolve()
    stamp = tuple((m.name, m.stat().st_mtime_ns, m.stat().st_size) for m in sorted(p.parent.glob("manifest*.json")))
    return _manifest_entries(str(p.parent), stamp).get(p.name) if stamp else None


# ---------------------------------------------------------------------------------------------- open and read


def open_shard(path: str | Path) -> ShardContents:
    """Index a shard and check it against its index file / manifest; cached per (absolute path, mtime, size)."""
    real = Path(path).resolve()
    st = real.stat()
    return _open_shard(str(real), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4096)
def _open_shard(path: str, mtime_ns: int, size: int) -> ShardContents:
    entry = manifest_entry(path)
    expected_bytes = entry.get("bytes") if entry else None
    index = _load_index(Path(path), expected_bytes)
    damage: list[Damage] = []
    if index is not None:
        refs = []
        for r in index:
            if r.end > size:
                damage.append(
                    Damage(path, r.start, f"record {r.key!r} truncated: it ends at byte {r.end}, the shard at {size}")
                )
            else:
                refs.append(r)
        return ShardContents(path, tuple(refs), tuple(damage), len(index))
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            refs, damage = scan_tar(buf, path)
            whole_ok = entry is None or (size == entry["bytes"] and _sha256(buf) == entry["sha256"])
        finally:
            if size:
                buf.close()
    expected = entry.get("samples") if entry else None
    if not whole_ok:
        log.warning("%s: size or SHA-256 differs from its manifest; checking its records one by one", path)
    if expected is not None:
        missing = expected - len(refs) - sum(d.records for d in damage)
        if missing > 0:
            damage.append(Damage(path, size, f"{missing} record(s) the manifest lists are not in the shard", missing))
    elif not refs and not damage and size:
        damage.append(Damage(path, 0, "no tar records found"))
    return ShardContents(path, tuple(refs), tuple(damage), expected)


def _sha256(buf: Any) -> str:
    return hashlib.sha256(buf).hexdigest()


def record_from_bytes(ref: RecordRef, buf: Any, copy: bool = True) -> dict:
    """The record `ref` out of the bytes of its span (any buffer; checked against its checksum); raises RecordDamaged.

    copy=True: every member is copied out as `bytes`, nothing returned refers to `buf`. copy=False: members other than
    the JSON are memoryview slices of `buf` (no copy; they keep `buf`'s memory alive).
    """
    if len(buf) != ref.end - ref.start:
        raise RecordDamaged(Damage(ref.shard, ref.start, f"record {ref.key!r} truncated"))
    if ref.digest is not None and CHECKSUMS[ref.checksum](buf) != ref.digest:
        what = "CRC-32" if ref.checksum == "crc32" else ref.checksum.upper()
        raise RecordDamaged(Damage(ref.shard, ref.start, f"record {ref.key!r}: {what} differs from the index"))
    record: dict[str, Any] = {"__key__": ref.key, "__url__": ref.shard}
    view = memoryview(buf)
    for ext, offset, size in ref.members:
        at = offset - ref.start
        record[ext] = bytes(view[at : at + size]) if copy or ext == "json" else view[at : at + size]
    return record


@lru_cache(maxsize=64)
def _shard_map(path: str, inode: int, mtime_ns: int, size: int) -> mmap.mmap:
    """A read-only map of a whole shard, kept for random access (the 64 most recent shards a process reads).

    A map dropped from the cache is unmapped, and its file descriptor closed, when the last frame view of it is gone.
    """
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_record(ref: RecordRef) -> dict:
    """One raw record by random access; raises RecordDamaged.

    The record is checked in the shard's memory map and its frames are views of that map, not copies: reading a
    record into fresh memory costs a page fault a page, which for records of uncompressed frames (megabytes) was
    most of the read. Only the samples in flight hold maps beyond the cache's 64.
    """
    st = os.stat(ref.shard)
    if st.st_size == 0:
        raise RecordDamaged(Damage(ref.shard, ref.start, f"record {ref.key!r} truncated"))
    buf = _shard_map(ref.shard, st.st_ino, st.st_mtime_ns, st.st_size)  # a file renamed over it is mapped afresh
    return record_from_bytes(ref, memoryview(buf)[ref.start : ref.end], copy=False)


def to_sample(record: dict, ref: RecordRef | None = None) -> Sample:
    """A Sample from a checked record; JSON or frame damage raises RecordDamaged naming the shard and offset.

    Besides the JSON and the frame files, `Sample.from_record` checks the key (a file name for `inspect`) and each
    frame's header size against media.size (what decoding it would allocate): the checks a record needs even when
    its index checksum matches and `validate()` is skipped. JSON nested past the parsers' depth is damage too.
    """
    try:
        return Sample.from_record(record)  # checks frame files against media.num_frames
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as err:
        shard, offset = (ref.shard, ref.start) if ref is not None else (record.get("__url__", "?"), -1)
        key = record.get("__key__")
        raise RecordDamaged(Damage(shard, offset, f"record {key!r} unreadable: {type(err).__name__}: {err}")) from None


def read_sample(ref: RecordRef) -> Sample:
    """One Sample by random access; raises RecordDamaged."""
    return to_sample(read_record(ref), ref)


def iter_shard_records(path: str | Path, damage: DamageLog, copy: bool = True) -> Iterator[tuple[RecordRef, dict]]:
    """(reference, raw record) of every intact record of a shard, in order; damage goes to `damage`.

    copy=False hands the frames on as read-only slices of the shard's memory map instead of copies (for a pass that
    consumes its records as they come): the map then stays open until the last of them is gone, holding a file
    descriptor, so a consumer that keeps many records of many shards (a shuffle buffer) should copy.
    """
    try:
        contents = open_shard(path)
    except OSError as err:
        damage.report(Damage(str(path), 0, f"unreadable shard: {err}"))
        return
    for d in contents.damage:
        damage.report(d)
    if not contents.refs:
        return
    with open(contents.path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        for ref in contents.refs:
            try:
                record = record_from_bytes(ref, memoryview(buf)[ref.start : ref.end], copy=copy)
            except RecordDamaged as err:
                damage.report(err.damage)
                continue
            yield ref, record
    finally:
        if copy:
            try:
                buf.close()
            except BufferError:  # a view still alive (a traceback's frame): the map goes with it
                pass


def iter_samples(paths: Sequence[str | Path], damage: DamageLog, copy: bool = True) -> Iterator[Sample]:
    """Samples of the shards `paths`, in order, every damaged record skipped and reported to `damage`.

    copy=False: frames are views of the shards' maps (see `iter_shard_records`).
    """
    for path in paths:
        for ref, record in iter_shard_records(path, damage, copy=copy):
            try:
                yield to_sample(record, ref)
            except RecordDamaged as err:
                damage.report(err.damage)
