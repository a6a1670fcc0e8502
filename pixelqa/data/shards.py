"""Atomic, resumable, deterministic shard building: converter -> validated Samples -> WebDataset tars.

Layout: ``OUT/<source>/<split>/<source>-<split>-%06d.tar`` plus a manifest (``manifest.json``; with
several nodes one ``manifest-node%03d-of%03d.json`` per node). Each shard is written by webdataset's
`TarWriter` to ``<name>.partial`` and renamed when complete; tar members carry fixed mtime/uid/gid/mode,
so a rebuild gives byte-identical shards. A progress file (``.progress-node%03d-of%03d.json``) records
every completed shard with the converter position where the next shard starts; a rerun after a kill
keeps the complete shards (checked by SHA-256) and resumes from there.

Work division: the converter's `items` are split into `num_nodes` contiguous blocks; node r converts
block r and numbers its shards r, r + N, r + 2N, ... so nodes never collide. Within a node, `workers`
processes convert and validate items in order (a process pool, results taken in order), the parent writes.

Beside each shard the build writes its record index (``<name>.idx.json``: byte span, member offsets and checksum of
every record), against which `pixelqa.data.shard_reader` checks what it reads. A node's build holds a lock on its
shard folder (``.build-node%03d-of%03d.lock``, `pixelqa.locks`, released by the kernel when the process dies): a
second build of the same node's shards fails at once naming the holder, or waits for it (`wait=True`), so two
builds never interleave records. Nodes of one build (one `num_nodes`) write the folder together; a build of another
layout is refused while one runs (its shard names would collide) and once one has left its manifests or progress.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shlex
import signal
import tarfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from pixelqa.data.catalog import get_source
from pixelqa.data.layout import shard_dir, shard_name
from pixelqa.data.registry import SkippedSample
from pixelqa.data.schema import FRAME_CODECS, KEY_FORMAT, SCHEMA_VERSION, Sample, transcode_media
from pixelqa.data.shard_reader import index_path, make_index
from pixelqa.files import atomic_file
from pixelqa.locks import file_lock, holder, release, take

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
TAR_USER = "pixelqa"
TAR_MTIME = 0  # fixed, so rebuilt shards are byte-identical
ITEMS_PER_TASK = 8  # items a worker converts per task: amortises inter-process overhead


@dataclass
class BuildConfig:
    """Everything that determines the content of a build (part of the progress/manifest files)."""

    source: str
    split: str
    max_count: int = 1000  # samples per shard
    max_bytes: int = 256 * 2**20  # bytes per shard (tar size, approximate to a few KiB)
    max_samples: int | None = None  # per node: this node writes at most this many samples
    node_rank: int = 0
    num_nodes: int = 1
    check_frames: bool = True  # decode every frame during validation
    schema_version: int = SCHEMA_VERSION
    frame_codec: str = "keep"  # keep: frames as the release ships them; jpg | png | ppm: re-encoded (ppm: raw pixels)

    def as_dict(self) -> dict:
        """The config as manifests and progress files record it; frame_codec only where it is not "keep", so a
        manifest written before the field existed still matches its build."""
        d = asdict(self)
        if d["frame_codec"] == "keep":
            del d["frame_codec"]
        return d


@dataclass
class ShardInfo:
    """A completed shard."""

    index: int
    name: str
    samples: int
    bytes: int
    sha256: str
    next_item: int  # converter position where the next shard starts: item index ...
    next_offset: int  # ... and samples of that item already written
    tasks: dict[str, int] = field(default_factory=dict)


class BuildError(RuntimeError):
    """A sample or item failed with --on-error fail; the message says which and why."""


class BuildLocked(BuildError):
    """Another process is building the same shards; the message names it."""


class BuildInputError(ValueError):
    """The build cannot start: a bad argument, source or split, unreadable raw annotations, or shard-folder state
    from a different or damaged build; the message names the value and what was expected."""


def manifest_name(node_rank: int, num_nodes: int) -> str:
    """The manifest file name of one node's build."""
    return "manifest.json" if num_nodes == 1 else f"manifest-node{node_rank:03d}-of{num_nodes:03d}.json"


def progress_name(node_rank: int, num_nodes: int) -> str:
    """The progress file name of one node's build (present from its first complete shard until its manifest)."""
    return f".progress-node{node_rank:03d}-of{num_nodes:03d}.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tar_member_bytes(record: dict) -> int:
    """Bytes a record occupies in a tar: a 512-byte header plus padded payload per member."""
    total = 0
    for k, v in record.items():
        if k.startswith("__"):
            continue
        total += 512 + (len(v) + 511) // 512 * 512
    return total


# ---------------------------------------------------------------------------------------------- workers

_WORKER_SOURCE: Any = None


def _convert_items(args: tuple[str, str, str, bool, str, list[tuple[int, Any, int]]]) -> list[tuple]:
    """Worker task: convert items, validate, re-encode their frames (unless frame_codec is "keep") and serialise them.

    Returns, per sample, ("ok", item_pos, offset, key, task, record), ("reject", item_pos, offset, key, reason) or
    ("skip", item_pos, offset, key, reason) for an item that holds nothing to ask;
    an item whose converter raises gives ("reject", item_pos, -1, None, reason).
    """
    source, root, split, check_frames, frame_codec, batch = args
    global _WORKER_SOURCE
    if _WORKER_SOURCE is None or _WORKER_SOURCE.name != source:
        _WORKER_SOURCE = get_source(source)
    out: list[tuple] = []
    for pos, item, skip in batch:
        offset = -1
        try:
            for offset, sample in enumerate(_WORKER_SOURCE.convert(Path(root), split, item)):
                if offset < skip:
                    continue
                key = getattr(sample, "key", None)
                if isinstance(sample, SkippedSample):
                    out.append(("skip", pos, offset, key, sample.reason))
                    continue
                try:
                    if not isinstance(sample, Sample):
                        raise TypeError(f"converter yielded {type(sample).__name__}, expected a Sample")
                    sample.validate(check_frames=check_frames)
                    if sample.source != source or sample.split != split:
                        raise ValueError(
                            f"source/split: got {sample.source!r}/{sample.split!r}, expected {source!r}/{split!r}"
                        )
                    if frame_codec != "keep":
                        transcode_media(sample.media, frame_codec)
                    out.append(("ok", pos, offset, sample.key, sample.task, sample.to_record()))
                except (ValueError, TypeError) as e:
                    out.append(("reject", pos, offset, key, f"{type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001 - a broken raw item is reported (or fails the build), never lost
            out.append(("reject", pos, -1, None, f"item {item!r} after sample {offset}: {type(e).__name__}: {e}"))
    return out


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (one message; the workers finish their task and exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _tasks(batches: Iterator[list], workers: int) -> Iterator[list[tuple]]:
    """Run `_convert_items` over batches, in order, in `workers` processes (0/1 = in this process)."""
    if workers <= 1:
        for b in batches:
            yield _convert_items(b)
        return
    import cv2

    # One OpenCV thread per build process (the processes are the parallelism), set in the parent *before* forking:
    # a forked child that resizes the thread pool it inherited from a parent that had used it hangs for good in
    # pthread_cond_destroy (seen in `bench data` at 448 px).
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    # Not multiprocessing.Pool: a build that stops early (max_samples) closes this generator with tasks in flight,
    # and Pool.terminate then kills workers that may be writing a result, which can leave its result thread blocked
    # on a half-written message and the build hung for good (seen in CI). The executor's shutdown waits for the
    # tasks in flight (a few items each; none is cancelled, see below); a worker that dies raises BrokenProcessPool.
    pending: deque = deque()
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ignore_sigint) as pool:
            try:
                for batch in itertools.islice(batches, 2 * workers):
                    pending.append(pool.submit(_convert_items, batch))
                while pending:
                    try:
                        done = pending.popleft().result()
                    except BrokenProcessPool as err:
                        raise BuildError(
                            f"a build worker process died ({err}); the complete shards are kept: run the same "
                            "command again to resume"
                        ) from err
                    more = next(batches, None)
                    if more is not None:
                        pending.append(pool.submit(_convert_items, more))
                    yield done
            finally:
                # the tasks in flight (at most 2 x workers batches of a few items) are waited for, not cancelled:
                # on Python 3.11.2 (Debian 12's) a shutdown right after cancelling futures the manager thread had
                # already queued hung for good (gh-94440, fixed in later 3.11 releases)
                wait(pending)
    finally:
        cv2.setNumThreads(threads)


# ---------------------------------------------------------------------------------------------- writer


class _ShardSink:
    """Writes records into numbered shards with count/byte bounds, atomically."""

    def __init__(self, folder: Path, cfg: BuildConfig, first_local: int) -> None:
        self.folder, self.cfg = folder, cfg
        self.local = first_local  # this node's k-th shard -> global index k * N + r
        self.stream = None
        self.writer: wds.TarWriter | None = None
        self.count = 0
        self.bytes = 0
        self.tasks: Counter = Counter()

    @property
    def index(self) -> int:
        """Global index of the shard being written."""
        return self.local * self.cfg.num_nodes + self.cfg.node_rank

    def _open(self) -> None:
        self.path = self.folder / shard_name(self.cfg.source, self.cfg.split, self.index)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.stream = open(self.tmp, "wb")  # noqa: SIM115 - stays open across add() calls until close()
        self.writer = wds.TarWriter(
            self.stream,
            user=TAR_USER,
            group=TAR_USER,
            mode=0o444,
            mtime=TAR_MTIME,
            format=tarfile.USTAR_FORMAT,
            encoder=False,
        )

    def add(self, record: dict, task: str, size: int) -> bool:
        """Write one record; True when the shard is now full (the caller then closes it)."""
        if self.writer is None:
            self._open()
        self.writer.write(record)
        self.count += 1
        self.bytes += size
        self.tasks[task] += 1
        return self.count >= self.cfg.max_count

    def fits(self, size: int) -> bool:
        """Whether a record of `size` bytes still fits the open shard (an empty shard takes anything)."""
        return self.count == 0 or self.bytes + size + 1024 <= self.cfg.max_bytes

    def abandon(self, remove: bool = False) -> None:
        """Close the open shard without putting it in place (a rerun rewrites it); `remove` deletes its file."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OSError:  # a full disk fails the flush too: the partial file is rewritten by the rerun anyway
            pass
        try:
            self.stream.close()
        except OSError:
            pass
        if remove:
            self.tmp.unlink(missing_ok=True)
        self.writer, self.stream, self.count, self.bytes = None, None, 0, 0
        self.tasks = Counter()

    def close(self, next_item: int, next_offset: int) -> ShardInfo | None:
        """Finish the open shard (rename into place); None when nothing was written."""
        if self.writer is None:
            return None
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        write_index(self.tmp, self.path)
        os.replace(self.tmp, self.path)
        info = ShardInfo(
            index=self.index,
            name=self.path.name,
            samples=self.count,
            bytes=self.path.stat().st_size,
            sha256=sha256_file(self.path),
            next_item=next_item,
            next_offset=next_offset,
            tasks=dict(self.tasks),
        )
        self.writer, self.stream, self.count, self.bytes = None, None, 0, 0
        self.tasks = Counter()
        self.local += 1
        return info


# ---------------------------------------------------------------------------------------------- build


def _node_block(n_items: int, node_rank: int, num_nodes: int) -> tuple[int, int]:
    """[start, stop) of node `node_rank`'s contiguous block of items."""
    return n_items * node_rank // num_nodes, n_items * (node_rank + 1) // num_nodes


def _raw_name(path: Path, root: Path) -> str:
    """A raw file's name in manifests: relative to the raw root when it lies under it, else as given."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# A raw file's recorded size and mtime vouch for its checksum only if it was last written this long before they were
# taken: file times tick coarsely (a few ms), so a same-size edit right after the stat could keep them ("racy git").
RACY_NS = 2 * 10**9


def _raw_checksums(src: Any, root: Path, split: str) -> tuple[dict[str, str], dict[str, Any]]:
    """SHA-256 of each raw annotation file the converter lists (paths relative to root when possible), and their
    stats: [size, mtime_ns] of each, taken before it is hashed (a file edited meanwhile is hashed again next time),
    and when (`"at"`, ns)."""
    sums: dict[str, str] = {}
    stats: dict[str, list[int]] = {}
    at = time.time_ns()
    for p in src.raw_files(root, split):
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"raw file of source {src.name!r}: expected {p} (see datasets/{src.name}.yaml)")
        name, st = _raw_name(p, root), p.stat()
        stats[name] = [st.st_size, st.st_mtime_ns]
        sums[name] = sha256_file(p)
    return dict(sorted(sums.items())), {"at": at, "files": dict(sorted(stats.items()))}


def _present_raw_checksums(
    src: Any, root: Path, split: str, known: dict[str, str] | None = None, stats: dict | None = None
) -> dict[str, str] | None:
    """SHA-256 of the raw annotation files that are there now; None when none is (a complete build no longer needs
    them: there is nothing to compare its manifest with).

    known / stats: a manifest's `raw_files` and `raw_stats`; a file whose size and mtime (ns) are those recorded,
    and were written well before they were (RACY_NS), takes its recorded checksum unread (rsync's quick check: a
    rerun of a complete build over large COCO / refer JSON files stays instant; an edit changes the mtime)."""
    try:
        paths = [Path(p) for p in src.raw_files(root, split)]
    except (FileNotFoundError, NotADirectoryError):  # the raw root (or its split folder) is gone
        return None
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    known, stats = known or {}, stats or {}
    at, recorded = stats.get("at"), stats.get("files") or {}
    sums = {}
    for p in present:
        name, st = _raw_name(p, root), p.stat()
        same = recorded.get(name) == [st.st_size, st.st_mtime_ns] and isinstance(known.get(name), str)
        settled = isinstance(at, int) and st.st_mtime_ns <= at - RACY_NS
        sums[name] = known[name] if same and settled else sha256_file(p)
    return dict(sorted(sums.items()))


def _items_digest(items: Sequence[Any]) -> str:
    """SHA-256 of the converter's item list in order (each item's repr: ids, names, tuples of them)."""
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def _raw_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The raw files two checksum maps disagree on, as 'NAME changed' / 'NAME added' / 'NAME removed'."""
    changes = [f"{n} changed" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]
    changes += [f"{n} added" for n in sorted(new.keys() - old.keys())]
    return changes + [f"{n} removed" for n in sorted(old.keys() - new.keys())]


def _first_few(things: Sequence[str], shown: int = 3) -> str:
    """The first `shown` of a list, comma-separated, with the count of the rest."""
    more = len(things) - shown
    return ", ".join(things[:shown]) + (f" and {more} more" if more > 0 else "")


def missing_raw_files(src: Any, root: Path, split: str) -> None:
    """Raise FileNotFoundError naming the first raw annotation file of `src` that is not under `root`."""
    for p in src.raw_files(Path(root), split):
        if not Path(p).is_file():
            raise FileNotFoundError(f"raw file of source {src.name!r}: expected {p} (see datasets/{src.name}.yaml)")


def check_build_inputs(source: str, split: str, root: str | Path, out: str | Path) -> Any:
    """The converter of a build, checked before anything is written: a known source and split (BuildInputError) and,
    for a shard folder not started yet, its raw files (FileNotFoundError)."""
    try:
        src = get_source(source)
        src.check_split(split)
    except ValueError as err:
        raise BuildInputError(str(err)) from None
    if not shard_dir(Path(out), source, split).is_dir():
        # A build that cannot find its raw files fails before creating anything (no empty folders left behind);
        # an existing folder may hold a complete build that no longer needs them, so it is not checked here.
        missing_raw_files(src, Path(root), split)
    return src


def _read_state(path: Path, folder: Path) -> dict:
    """A manifest or progress file of a shard folder; BuildInputError when it is not a JSON object."""
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BuildInputError(
            f"{path}: not valid JSON ({err}), expected a build's manifest or progress; delete {folder} "
            "or use another --out"
        ) from None
    if not isinstance(state, dict):
        raise BuildInputError(f"{path}: got {type(state).__name__}, expected a JSON object; delete {folder}")
    return state


def _load_progress(
    path: Path, cfg: BuildConfig, folder: Path, inputs: dict | None = None
) -> tuple[list[ShardInfo], list[dict], list[dict]]:
    """Shards, rejects and skipped items recorded by an interrupted build with the same config ([] when none).

    inputs: {"root", "raw_files", "items"} of this run (`_build_inputs`); a progress file that recorded other raw
    files or another item list is refused, since its item positions would resume in the wrong place."""
    if not path.is_file():
        return [], [], []
    state = _read_state(path, folder)
    if state.get("key_format", 1) != KEY_FORMAT:
        raise BuildInputError(
            f"{path}: the interrupted build was begun by a PixelQA that spelled sample keys another way (key format "
            f"{state.get('key_format', 1)}, now {KEY_FORMAT}): resuming it would mix both in one build; delete "
            f"{folder} (or build into another --out) to build it again"
        )
    if state.get("config") != cfg.as_dict():
        diff = _config_diff(state.get("config"), cfg.as_dict())
        raise BuildInputError(
            f"{path}: an interrupted build with other options is there ({diff}); rerun with its options to resume "
            f"it, or delete {folder} (or build into another --out)"
        )
    if inputs is not None:
        _refuse_changed_inputs(path, state, inputs, folder)
    shards = [ShardInfo(**s) for s in state["shards"]]
    kept: list[ShardInfo] = []
    for s in shards:  # keep the longest prefix of intact shards
        p = folder / s.name
        if not p.is_file() or p.stat().st_size != s.bytes or sha256_file(p) != s.sha256:
            log.warning("shard %s is missing or changed; rebuilding from there", p)
            break
        if not index_path(p).is_file():  # kept from a build made before index files existed
            write_index(p)
        kept.append(s)
    if not kept:
        return [], [], []
    resume = (kept[-1].next_item, kept[-1].next_offset)
    rejects = [r for r in state["rejects"] if (r["item"], max(r["offset"], 0)) < resume]
    skips = [r for r in state.get("skipped", []) if (r["item"], max(r["offset"], 0)) < resume]
    return kept, rejects, skips


def _build_inputs(root: Path, raw_sums: dict[str, str], items: Sequence[Any]) -> dict:
    """What a build reads, as its progress file records it: the raw files' checksums and its item list's digest."""
    return {"root": str(root), "raw_files": raw_sums, "items": {"total": len(items), "sha256": _items_digest(items)}}


def _refuse_changed_inputs(path: Path, state: dict, inputs: dict, folder: Path) -> None:
    """BuildInputError when the raw files or the item list of an interrupted build (its progress `state`) are not
    those of this run: the recorded item positions would point at other items (lost items, false duplicates)."""
    old_raw, old_items = state.get("raw_files"), state.get("items")
    changes = _raw_changes(old_raw, inputs["raw_files"]) if isinstance(old_raw, dict) else []  # older files: none
    if not changes and isinstance(old_items, dict) and old_items.get("sha256") not in (None, inputs["items"]["sha256"]):
        changes = [f"the item list ({old_items.get('total')} items then, {inputs['items']['total']} now)"]
    if changes:
        raise BuildInputError(
            f"{path}: the raw files under {inputs['root']} changed since the interrupted build ({_first_few(changes)}"
            f"; {len(changes)} in all): its complete shards were converted from the old files; delete {folder} (or "
            "build into another --out) to build from the new files, or restore the old ones and rerun to resume"
        )


def _config_diff(old: Any, new: dict) -> str:
    """The build options two recorded configs differ in, as the command line spells them."""
    if not isinstance(old, dict):
        return f"config {old!r}"
    defaults = {key: default for key, _, default in _BUILD_OPTIONS}
    flags = {key: flag for key, flag, _ in _BUILD_OPTIONS}
    flags.update(check_frames="--no-check-frames", node_rank="--node-rank", num_nodes="--num-nodes")
    diffs = []
    for key in sorted(old.keys() | new.keys()):
        then, now = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if then != now:
            if key == "check_frames":  # the flag turns it off
                then, now = ("set" if v is False else "not set" for v in (then, now))
            then, now = ("not set" if v is None else v for v in (then, now))
            diffs.append(f"{flags.get(key, key)} {then} then, {now} in this command")
    return "; ".join(diffs) or "none"


def _check_complete(manifest: dict, path: Path, cfg: BuildConfig, folder: Path, src: Any, root: Path) -> None:
    """BuildInputError when the complete build in `folder` (its `manifest` at `path`) is not what this command would
    build: other options, a shard missing or changed, or raw files changed since (when they are there to compare)."""
    if manifest.get("config") != cfg.as_dict():
        diff = _config_diff(manifest.get("config"), cfg.as_dict())
        raise BuildInputError(
            f"{path}: a complete build with other options is there ({diff}); rerun with its options, or delete "
            f"{folder} (or use another --out) to build with these"
        )
    shards = manifest.get("shards")
    entry = ("name", "samples", "bytes")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and all(k in s for k in entry) for s in shards):
        raise BuildInputError(
            f"{path}: got shards={shards!r:.60}, expected a list of entries with {', '.join(entry)}; delete {folder} "
            "(or use another --out) to build it again"
        )
    missing = [s["name"] for s in shards if not (folder / s["name"]).is_file()]
    if missing:
        lost = sum(s["samples"] for s in shards if s["name"] in missing)
        raise BuildInputError(
            f"{path}: shard {_first_few(missing)} listed there is missing ({lost} samples); restore it from where the "
            f"folder came from, or delete {folder} (or use another --out) to build it again"
        )
    resized = [s["name"] for s in shards if (folder / s["name"]).stat().st_size != s["bytes"]]
    if resized:
        raise BuildInputError(
            f"{path}: shard {_first_few(resized)} differs in size from what the build wrote; delete {folder} (or use "
            "another --out) to build it again"
        )
    recorded, stats = manifest.get("raw_files"), manifest.get("raw_stats")
    if not isinstance(recorded, dict):  # a manifest from before raw checksums were recorded: nothing to compare
        return
    now = _present_raw_checksums(src, root, cfg.split, recorded, stats if isinstance(stats, dict) else None)
    changes = _raw_changes(recorded, now) if now is not None else []
    if changes:
        raise BuildInputError(
            f"{path}: the raw files under {root} changed since this build ({_first_few(changes)}; {len(changes)} in "
            f"all): its shards hold the old data; delete {folder} (or use another --out) to build from the new files"
        )


def write_index(shard: Path, final: Path | None = None) -> Path:
    """Write the record index of a complete shard beside it (named after `final`, its name once renamed)."""
    index = make_index(shard)
    final = Path(final or shard)
    index["shard"] = final.name
    path = index_path(final)
    write_text_atomic(path, json.dumps(index, separators=(",", ":")) + "\n")
    return path


# What a refused build is told by default: true for any caller, naming the command that has --wait (callers
# without that flag, a mixture or fit, pass their own advice)
LOCKED_ADVICE = "wait for it to finish (`python -m pixelqa.data build ... --wait` waits for it), or use another --out"
LAYOUT_GUARD = ".build-layout.lock"  # held briefly while a build takes its node's lock: see build_lock
_NODE_LOCK = re.compile(r"\.build-node(\d{3})-of(\d{3})\.lock")


def node_lock_name(node_rank: int, num_nodes: int) -> str:
    """The lock file name of one node's build."""
    return f".build-node{node_rank:03d}-of{num_nodes:03d}.lock"


def _refuse_other_layouts(folder: Path, num_nodes: int) -> None:
    """BuildLocked when a build of `folder` with another num_nodes runs: both would write the same shard names."""
    for path in sorted(folder.glob(".build-node*-of*.lock")):
        m = _NODE_LOCK.fullmatch(path.name)
        if m is None or int(m.group(2)) == num_nodes:
            continue
        who = holder(path)
        if who is not None:
            # no "wait": once it has finished, its manifests refuse this layout all the same
            theirs = int(m.group(2))
            raise BuildLocked(
                f"{folder} is being built by {who} with --num-nodes {theirs} (lock {path.name}); a build with "
                f"--num-nodes {num_nodes} would write the same shard names: build with --num-nodes {theirs} (its "
                "other nodes), or into another --out"
            )


@contextmanager
def build_lock(
    folder: Path, node_rank: int = 0, num_nodes: int = 1, wait: bool = False, advice: str = LOCKED_ADVICE
) -> Iterator[Path]:
    """Hold the build lock of one node's shards in `folder`; held elsewhere: wait (`wait`), or BuildLocked naming
    the holder and `advice`. A build of another layout (num_nodes) running in the folder: BuildLocked, even with
    `wait` (what it leaves is refused anyway)."""
    path = folder / node_lock_name(node_rank, num_nodes)
    # not re-entrant: a second build of this node's shards in this process would interleave records all the same
    kw = {"subject": str(folder), "advice": advice, "busy": "being built", "error": BuildLocked, "reentrant": False}
    guard = folder / LAYOUT_GUARD

    def waiting(who: str) -> None:
        log.warning("waiting for the build of %s by %s", folder, who)

    # Every node lock is taken under the guard, and the other layouts' locks are probed under it: a probe then
    # never races a take (two layouts could otherwise both start, or one be refused by the other's probe).
    queued = False
    with file_lock(guard, str(folder), wait=True, error=BuildLocked):
        _refuse_other_layouts(folder, num_nodes)
        try:
            take(path, **kw)
        except BuildLocked:
            if not wait:
                raise
            queued = True
    if queued:  # waited for outside the guard, which other builds need meanwhile; checked again once taken
        take(path, wait=True, on_wait=waiting, **kw)
        try:
            with file_lock(guard, str(folder), wait=True, error=BuildLocked):
                _refuse_other_layouts(folder, num_nodes)
        except BaseException:
            release(path)
            raise
    try:
        yield path
    finally:
        release(path)  # the last release closes the file, which drops the lock (the file stays)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (a temporary of a unique name beside it, then a rename): readers never see half
    a file, and two writers of one file never rename each other's temporary."""
    atomic_file(path, lambda tmp: tmp.write_text(text))


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def build_shards(
    source: str,
    root: str | Path,
    out: str | Path,
    split: str = "train",
    workers: int = 1,
    on_error: str = "fail",
    node_rank: int = 0,
    num_nodes: int = 1,
    max_samples: int | None = None,
    max_count: int = 1000,
    max_bytes: int = 256 * 2**20,
    check_frames: bool = True,
    progress: bool = True,
    wait: bool = False,
    frame_codec: str = "keep",
    advice: str = LOCKED_ADVICE,
) -> dict:
    """Convert `source`'s `split` under `root` into shards under `out`; returns the manifest dict.

    wait: when another process holds this build's lock, wait for it (then find its shards complete) instead of
    failing at once with BuildLocked, whose message ends with `advice` (what the caller can do: a command without
    --wait says so). frame_codec: "keep" stores frames as the release ships them; "ppm" stores
    their decoded pixels (several times the bytes, decoded by one copy: the fast loader for small frames); "jpg" /
    "png" re-encode.
    """
    if frame_codec not in FRAME_CODECS:
        raise BuildInputError(f"frame_codec: got {frame_codec!r}, expected one of {FRAME_CODECS}")
    if on_error not in ON_ERROR:
        raise BuildInputError(f"on_error: got {on_error!r}, expected one of {ON_ERROR}")
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise BuildInputError(f"node_rank/num_nodes: got {node_rank}/{num_nodes}, expected 0 <= node_rank < num_nodes")
    if max_count < 1 or max_bytes < 1024:
        raise BuildInputError(f"max_count/max_bytes: got {max_count}/{max_bytes}, expected >= 1 / >= 1024")
    if max_samples is not None and max_samples < 0:
        raise BuildInputError(f"max_samples: got {max_samples}, expected None or >= 0")
    if workers < 1:
        raise BuildInputError(f"workers: got {workers}, expected >= 1 (converter processes; 1 converts in this one)")
    root, out = Path(root), Path(out)
    src = check_build_inputs(source, split, root, out)
    cfg = BuildConfig(
        source, split, max_count, max_bytes, max_samples, node_rank, num_nodes, check_frames, frame_codec=frame_codec
    )
    folder = shard_dir(out, source, split)
    folder.mkdir(parents=True, exist_ok=True)
    with build_lock(folder, node_rank, num_nodes, wait, advice):
        return _build_locked(src, Path(root), cfg, folder, workers, on_error, progress)


def _refuse_other_layout_files(folder: Path, num_nodes: int) -> None:
    """BuildInputError when `folder` holds manifests or progress of a build with another num_nodes: this one would
    overwrite its shards (same names, other content) under its manifests' checksums."""
    for path in sorted([*folder.glob("manifest*.json"), *folder.glob(".progress-node*-of*.json")]):
        theirs = _node_of(path.name)[1]
        if theirs != num_nodes:
            raise BuildInputError(
                f"{folder} holds a build with --num-nodes {theirs} ({path.name}); a build with --num-nodes {num_nodes} "
                f"would overwrite its shards: finish or keep that one (same --num-nodes), or delete {folder} or use "
                "another --out"
            )


def _build_locked(
    src: Any, root: Path, cfg: BuildConfig, folder: Path, workers: int, on_error: str, progress: bool
) -> dict:
    """The build itself, run while holding the folder's lock."""
    source, split, node_rank, num_nodes = cfg.source, cfg.split, cfg.node_rank, cfg.num_nodes
    max_samples, check_frames = cfg.max_samples, cfg.check_frames
    manifest_path = folder / manifest_name(node_rank, num_nodes)
    progress_path = folder / progress_name(node_rank, num_nodes)
    _refuse_other_layout_files(folder, num_nodes)

    if manifest_path.is_file() and not progress_path.is_file():
        manifest = _read_state(manifest_path, folder)
        _check_complete(manifest, manifest_path, cfg, folder, src, root)
        log.info("%s is complete; nothing to do", manifest_path)
        return manifest

    raw_sums, raw_stats = _raw_checksums(src, root, split)
    try:
        items = list(src.items(root, split))
    except (ValueError, TypeError) as err:  # a malformed annotation file: nothing to build from (the file is named)
        raise BuildInputError(f"{source}/{split} raw data under {root}: {err}") from None
    start, stop = _node_block(len(items), node_rank, num_nodes)
    inputs = _build_inputs(root, raw_sums, items)
    done, rejects, skips = _load_progress(progress_path, cfg, folder, inputs)
    cursor_item, cursor_offset = (done[-1].next_item, done[-1].next_offset) if done else (start, 0)
    written = sum(s.samples for s in done)
    if done:
        log.info("resuming %s/%s after %d complete shards (%d samples)", source, split, len(done), written)

    def batches() -> Iterator[tuple]:
        todo = [(pos, items[pos], cursor_offset if pos == cursor_item else 0) for pos in range(cursor_item, stop)]
        for i in range(0, len(todo), ITEMS_PER_TASK):
            yield (source, str(root), split, check_frames, cfg.frame_codec, todo[i : i + ITEMS_PER_TASK])

    def save_progress() -> None:
        state = {"config": cfg.as_dict(), "key_format": KEY_FORMAT, "shards": [asdict(s) for s in done]}
        state.update(rejects=rejects, skipped=skips)
        state.update(raw_files=inputs["raw_files"], items=inputs["items"])  # what a resume must find unchanged
        _write_json(progress_path, state)

    sink = _ShardSink(folder, cfg, first_local=len(done))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=stop - start, initial=cursor_item - start, desc=f"{source}/{split}", unit="item")
    seen_keys: set[str] = set()
    for s in done:  # keys of kept shards, so duplicates across the resume point are still caught
        seen_keys.update(shard_keys(folder / s.name))
    limit_hit = max_samples is not None and written >= max_samples
    last_pos = cursor_item
    try:
        for results in [] if limit_hit else _tasks(batches(), workers):
            for res in results:
                status, pos, offset = res[0], res[1], res[2]
                if status == "ok":
                    _, _, _, key, task, record = res
                    if key in seen_keys:
                        status, res = (
                            "reject",
                            ("reject", pos, offset, key, f"key: got duplicate {key!r}, expected unique keys"),
                        )
                    else:
                        seen_keys.add(key)
                        size = _tar_member_bytes(record)
                        if not sink.fits(size):
                            done.append(sink.close(pos, offset))
                            save_progress()
                        written += 1
                        if sink.add(record, task, size):
                            done.append(sink.close(pos, offset + 1))
                            save_progress()
                if status == "skip":  # nothing to ask in this item: counted and named, never fatal
                    log.info("skipped %s/%s item %d (key %s): %s", source, split, pos, res[3], res[4])
                    skips.append({"item": pos, "offset": offset, "key": res[3], "reason": res[4]})
                if status == "reject":
                    reason = res[4]
                    msg = f"{source}/{split} item {pos} sample {offset} (key {res[3]}): {reason}"
                    if on_error == "fail":
                        sink.abandon(remove=True)
                        raise BuildError(msg + " (use --on-error skip to record and skip such samples)")
                    log.warning("rejected %s", msg)
                    rejects.append({"item": pos, "offset": offset, "key": res[3], "reason": reason})
                if max_samples is not None and written >= max_samples:
                    limit_hit = True
                    break
            if bar is not None and results:
                bar.update(results[-1][1] + 1 - last_pos)
                last_pos = results[-1][1] + 1
            if limit_hit:
                break
    except BaseException as err:
        # Ctrl-C or a failure: close the open shard in order (its partial file is rewritten by the rerun); left
        # to the garbage collector, the tar stream would be flushed into a closed file and print a traceback.
        where = getattr(sink, "tmp", folder)
        sink.abandon()
        _raise_if_disk_full(err, where)
        raise
    if bar is not None:
        bar.close()
    try:
        last = sink.close(stop, 0)
    except OSError as err:
        sink.abandon()
        _raise_if_disk_full(err, sink.tmp)
        raise
    if last is not None:
        done.append(last)
    tasks: Counter = Counter()
    for s in done:
        tasks.update(s.tasks)
    manifest = {
        "source": source,
        "split": split,
        "schema_version": SCHEMA_VERSION,
        "key_format": KEY_FORMAT,
        "config": cfg.as_dict(),
        "num_samples": sum(s.samples for s in done),
        "num_bytes": sum(s.bytes for s in done),
        "shards": [
            {"name": s.name, "index": s.index, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256} for s in done
        ],
        "tasks": dict(sorted(tasks.items())),
        "raw_files": raw_sums,
        "raw_stats": raw_stats,  # size and mtime of each, so a rerun need not hash them again (_check_complete)
        "items": {"total": len(items), "node_start": start, "node_stop": stop},
        "num_rejects": len(rejects),
        "rejects": rejects,
        "num_skipped": len(skips),
        "skipped": skips,
    }
    # Under the layout guard, so that of two nodes finishing together the second sees the first's manifest.
    with file_lock(folder / LAYOUT_GUARD, str(folder), wait=True, error=BuildLocked):
        if num_nodes > 1:
            _refuse_keys_of_other_nodes(folder, cfg, seen_keys)
        try:
            _write_json(manifest_path, manifest)
        except OSError as err:
            _raise_if_disk_full(err, manifest_path)
            raise
    progress_path.unlink(missing_ok=True)
    return manifest


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _raise_if_disk_full(err: BaseException, where: Path) -> None:
    """A BuildError (one line) for a full disk or quota: what was being written and what the rerun keeps."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        raise BuildError(
            f"no space left on the device writing {where} ({err.strerror}); the complete shards are kept: free space "
            "and run the same command again to resume"
        ) from None


def shard_keys(shard: Path) -> list[str]:
    """The record keys of a complete shard, in order: from its index file when it has a readable one, else its tar."""
    try:
        return [str(r[0]) for r in json.loads(index_path(shard).read_text())["records"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # no index (an older build) or a damaged one
        with tarfile.open(shard) as tf:
            return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tf.getmembers() if m.isfile()))


def _refuse_keys_of_other_nodes(folder: Path, cfg: BuildConfig, keys: set[str]) -> None:
    """BuildError when a key this node wrote is in the shards of another node that has finished: each node sees its
    own keys only, so a key two raw items share (which one node rejects as a duplicate) is caught here."""
    clashes: list[str] = []
    for rank in range(cfg.num_nodes):
        path = folder / manifest_name(rank, cfg.num_nodes)
        if rank == cfg.node_rank or not path.is_file():
            continue
        for shard in _read_state(path, folder).get("shards", []):
            theirs = shard_keys(folder / shard["name"])
            clashes += [f"{key!r} (also in {shard['name']})" for key in theirs if key in keys]
    if clashes:
        raise BuildError(
            f"{cfg.source}/{cfg.split}: {len(clashes)} key(s) of this node's shards are in another node's shards too: "
            f"{_first_few(clashes)}; two raw items give one key (a single-node build rejects the second as a "
            f"duplicate). No manifest was written: give the items distinct names, then delete {folder} and build again"
        )


# a node's manifest or progress file of a build on several nodes (`manifest_name`, `progress_name`); plain
# manifest.json is the one node of a single-node build
_NODE_FILE = re.compile(r"(?:manifest|\.progress)-node(\d{3})-of(\d{3})\.json")
# build options as `python -m pixelqa.data build` spells them, with their defaults (left out of a command)
_BUILD_OPTIONS = (
    ("max_count", "--max-count", 1000),
    ("max_bytes", "--max-bytes", 256 * 2**20),
    ("max_samples", "--max-samples", None),
    ("frame_codec", "--frame-codec", "keep"),
)


@dataclass(frozen=True)
class Unfinished:
    """A shard folder whose build has not finished (or lost a shard since): why, in words, and the command that
    finishes (or redoes) it; `state` and `action` word both cases for the messages."""

    reason: str
    command: str
    state: str = "an unfinished build"
    action: str = "finish it with"


def _node_of(name: str) -> tuple[int, int]:
    """(node_rank, num_nodes) of a manifest or progress file name."""
    m = _NODE_FILE.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 1)


def finish_command(source: str, split: str, out: str | Path, config: dict | None) -> str:
    """The `data build` command that resumes a stopped build with the options its progress file or manifest
    recorded (`config`; None: options unknown, the same as the stopped build's must be given)."""
    cmd = f"python -m pixelqa.data build {source} --root RAW --out {out} --split {split}"
    if config is None:
        return cmd + " (with the options of the build that stopped)"
    for key, flag, default in _BUILD_OPTIONS:
        if config.get(key, default) != default:
            cmd += f" {flag} {config[key]}"
    if not config.get("check_frames", True):
        cmd += " --no-check-frames"
    if int(config.get("num_nodes", 1)) > 1:
        cmd += f" --node-rank {config['node_rank']} --num-nodes {config['num_nodes']}"
    return cmd


def _recorded_config(path: Path) -> dict | None:
    """The build config a progress file or manifest recorded; None when it is unreadable."""
    try:
        config = json.loads(path.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


def unfinished_build(folder: str | Path, out: str | Path | None = None) -> Unfinished | None:
    """None when a shard folder holds a finished build (every node's manifest, no progress file, every shard they
    list); else why not and the command that finishes (or, for a lost shard, redoes) it (`out`: the shard root as
    the user gave it, default the folder's grandparent).

    A build writes its manifest last and removes its progress file after it: shards beside a progress file, or with
    no manifest, are the first part of a build that was stopped (or still runs), not the dataset."""
    folder = Path(folder)
    out = folder.parent.parent if out is None else out
    source, split = folder.parent.name, folder.name
    progress = sorted(folder.glob(".progress-node*-of*.json"))
    if progress:
        config = _recorded_config(progress[0])
        reason = f"{progress[0].name} is there: a build stopped (or still running) before writing its manifest"
        return Unfinished(reason, finish_command(source, split, out, config))
    manifests = sorted(folder.glob("manifest*.json"))
    if not manifests:
        reason = "no manifest.json: the build that wrote them stopped before its end"
        return Unfinished(reason, finish_command(source, split, out, None))
    num_nodes = _node_of(manifests[0].name)[1]
    missing = sorted(set(range(num_nodes)) - {_node_of(m.name)[0] for m in manifests})
    if missing:
        config = _recorded_config(manifests[0])
        if config is not None:
            config = {**config, "node_rank": missing[0]}
        reason = f"{manifest_name(missing[0], num_nodes)} is missing: node {missing[0]} of {num_nodes} has not finished"
        return Unfinished(reason, finish_command(source, split, out, config))
    lost = missing_shards(folder)
    if lost:
        # Finished once, but a shard has gone since (deleted, not copied): what is left is part of the source only.
        more = (
            f" (with {len(lost) - 1} more shards: {sum(m.samples for m in lost)} samples in all)"
            if len(lost) > 1
            else ""
        )
        reason = f"{lost[0]}{more}; restore it from where the folder came from"
        config = _recorded_config(folder / lost[0].manifest)
        rebuild = finish_command(source, split, out, config)
        if config is not None and int(config.get("num_nodes", 1)) > 1:
            rebuild += f" (and the same for every other --node-rank of the {config['num_nodes']} nodes)"
        command = f"rm -r {shlex.quote(str(folder))} && {rebuild}"
        return Unfinished(reason, command, "a finished build with shards missing", "or delete and rebuild it with")
    return None


@dataclass(frozen=True)
class MissingShard:
    """A shard a manifest lists that is not on disk: its path, that manifest's name and the samples it held."""

    path: Path
    manifest: str
    samples: int

    def __str__(self) -> str:
        return f"shard {self.path} is missing ({self.samples} samples, listed by {self.manifest})"


def missing_shards(folder: str | Path) -> list[MissingShard]:
    """The shards that the manifests of `folder` list and that are not there (a manifest that cannot be read lists
    none here: `read_manifests` and `mixture.manifest_samples` name it)."""
    folder = Path(folder)
    out: list[MissingShard] = []
    for path in sorted(folder.glob("manifest*.json")):
        try:
            listed = [(str(s["name"]), int(s["samples"])) for s in json.loads(path.read_text())["shards"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out += [MissingShard(folder / name, path.name, n) for name, n in listed if not (folder / name).is_file()]
    return out


def read_manifests(folder: str | Path) -> list[dict]:
    """All manifests (one per building node) in a shard folder."""
    folder = Path(folder)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("manifest*.json"))]


def list_shards(folder: str | Path) -> list[Path]:
    """Complete shard files of a folder, sorted by name (partial files excluded)."""
    return sorted(Path(folder).glob("*.tar"))


def iter_records(paths: Sequence[str | Path]) -> Iterator[dict]:
    """Raw records of tar shards, in order, unchecked (tools and tests; training and evaluation use shard_reader)."""
    for path in paths:
        with tarfile.open(path) as tf:
            record: dict = {}
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = m.name.split(".", 1)
                if record and record["__key__"] != key:
                    yield record
                    record = {}
                record["__key__"] = key
                record["__url__"] = str(path)
                record[ext] = tf.extractfile(m).read()
            if record:
                yield record
