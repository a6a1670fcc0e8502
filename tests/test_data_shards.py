"""Shard building (atomic, resumable, byte-identical, node-disjoint) and the loader (mixing, exact passes, skips)."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pixelqa.data import masks, shards
from pixelqa.data.loader import frame_indices, make_dataset, select_frames
from pixelqa.data.prompts import resample_prompts, sample_box, sample_point
from pixelqa.data.registry import register_source
from pixelqa.data.schema import Sample
from pixelqa.data.shards import BuildError, build_shards, iter_records
from pixelqa.data.synthetic import make_sample

torch.set_num_threads(1)


@register_source("unit_flaky")
def _flaky(root: Path, split: str):
    """Every 5th sample breaks the schema (prompt outside the frame)."""
    for i in range(20):
        s = make_sample(i, "train")
        s.source, s.split = "unit_flaky", split
        if i % 5 == 3:
            s.prompts = s.prompts or []
            s.objects[1].masks[0] = masks.empty(5, 5)  # wrong RLE size
        yield s


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    m = build_shards("synthetic", ".", out, "train", workers=1, max_samples=60, max_count=16, progress=False)
    v = build_shards("synthetic", ".", out, "val", workers=1, max_samples=30, max_count=8, progress=False)
    return out, m, v


def test_layout_manifest_and_records(built):
    out, m, _ = built
    folder = out / "synthetic" / "train"
    names = sorted(p.name for p in folder.glob("*.tar"))
    assert names == [f"synthetic-train-{i:06d}.tar" for i in range(4)]  # 60 samples / 16 per shard
    assert m["num_samples"] == 60 and [s["samples"] for s in m["shards"]] == [16, 16, 16, 12]
    assert m["schema_version"] == 1 and m["num_rejects"] == 0 and sum(m["tasks"].values()) == 60
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk == m
    assert not list(folder.glob("*.partial")) and not list(folder.glob(".progress*"))
    with tarfile.open(folder / names[0]) as tf:
        members = tf.getmembers()
    assert members[0].name == "synthetic-train-0000000.000.png" and members[0].mtime == 0
    assert {mb.uname for mb in members} == {"pixelqa"}
    records = list(iter_records([folder / n for n in names]))
    assert [r["__key__"] for r in records] == [make_sample(i).key for i in range(60)]
    assert Sample.from_record(records[7]) == make_sample(7)  # the shard holds exactly the converter's sample


def test_rebuild_is_byte_identical_and_parallel_equals_serial(built, tmp_path):
    out, m, _ = built
    m2 = build_shards("synthetic", ".", tmp_path, "train", workers=2, max_samples=60, max_count=16, progress=False)
    assert _tars(tmp_path / "synthetic" / "train") == _tars(out / "synthetic" / "train")
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]
    again = build_shards("synthetic", ".", tmp_path, "train", workers=2, max_samples=60, max_count=16, progress=False)
    assert again == m2  # complete build: nothing to do


def test_resume_after_kill(built, tmp_path, monkeypatch):
    out, _, _ = built
    real_close = shards._ShardSink.close
    calls = {"n": 0}

    def dying_close(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_close(self, *a, **k)

    monkeypatch.setattr(shards._ShardSink, "close", dying_close)
    with pytest.raises(KeyboardInterrupt):
        build_shards("synthetic", ".", tmp_path, "train", max_samples=60, max_count=16, progress=False)
    folder = tmp_path / "synthetic" / "train"
    assert len(list(folder.glob("*.tar"))) == 2 and list(folder.glob("*.partial"))
    assert not (folder / "manifest.json").exists()
    monkeypatch.setattr(shards._ShardSink, "close", real_close)
    m = build_shards("synthetic", ".", tmp_path, "train", max_samples=60, max_count=16, progress=False)
    assert m["num_samples"] == 60
    assert _tars(folder) == _tars(out / "synthetic" / "train")
    with pytest.raises(ValueError, match="other options"):
        build_shards("synthetic", ".", tmp_path, "train", max_samples=61, max_count=16, progress=False)


def test_nodes_write_disjoint_shards(tmp_path):
    ms = [
        build_shards("synthetic", ".", tmp_path, "val", node_rank=r, num_nodes=2, max_count=30, progress=False)
        for r in range(2)
    ]
    idx = [{s["index"] for s in m["shards"]} for m in ms]
    assert idx[0] == {0, 2, 4, 6} and idx[1] == {1, 3, 5, 7} and not idx[0] & idx[1]
    folder = tmp_path / "synthetic" / "val"
    assert sorted(p.name for p in folder.glob("manifest*.json")) == [
        "manifest-node000-of002.json",
        "manifest-node001-of002.json",
    ]
    keys = [r["__key__"] for r in iter_records(sorted(folder.glob("*.tar")))]
    assert sorted(keys) == sorted(make_sample(i, "val").key for i in range(200)) and len(set(keys)) == 200


def test_byte_bound_and_errors(tmp_path):
    m = build_shards("synthetic", ".", tmp_path, "val", max_samples=40, max_bytes=40_000, progress=False)
    assert all(s["bytes"] <= 40_000 + 10240 for s in m["shards"]) and len(m["shards"]) > 1  # tar end padding
    with pytest.raises(BuildError, match=r"objects\[1\]\.masks\[0\]\.size"):
        build_shards("unit_flaky", ".", tmp_path / "f", "train", progress=False)
    r = build_shards("unit_flaky", ".", tmp_path / "s", "train", on_error="skip", progress=False)
    assert r["num_samples"] == 16 and r["num_rejects"] == 4 and "size" in r["rejects"][0]["reason"]
    with pytest.raises(ValueError, match="split"):
        build_shards("synthetic", ".", tmp_path, "test", progress=False)


def test_eval_pass_is_exact_with_workers(built):
    out, _, _ = built
    ds = make_dataset([out / "synthetic"], split="val", train=False)
    assert len(ds) == 30
    single = [s.key for s in ds]
    assert single == [make_sample(i, "val").key for i in range(30)]
    multi = [s.key for s in DataLoader(ds, batch_size=None, num_workers=2)]
    assert sorted(multi) == sorted(single)
    again = [(s.key, [p.coords for p in s.prompts]) for s in ds]
    assert again == [(s.key, [p.coords for p in s.prompts]) for s in ds]  # seeded


def test_train_mixing_follows_repeat_factors(built):
    out, _, _ = built
    # 60 train x repeat 1 vs 30 val x repeat 4: expected share of val = 120 / 180
    ds = make_dataset({out / "synthetic" / "train": 1, out / "synthetic" / "val": 4}, train=True, shuffle_buffer=20)
    splits = collections.Counter(s.split for s in itertools.islice(ds, 3000))
    assert splits["val"] / 3000 == pytest.approx(2 / 3, abs=0.04)
    a = [s.key for s in itertools.islice(make_dataset([out / "synthetic" / "train"], seed=3), 50)]
    b = [s.key for s in itertools.islice(make_dataset([out / "synthetic" / "train"], seed=3), 50)]
    assert a == b and len(set(a)) > 30


def test_corrupt_shard_is_skipped_and_counted(built, tmp_path, caplog):
    out, _, _ = built
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = out / "synthetic" / "val" / "synthetic-val-000000.tar"
    (folder / "a.tar").write_bytes(good.read_bytes())
    (folder / "b.tar").write_bytes(b"this is not a tar file" * 100)
    ds = make_dataset([folder], train=False)
    with caplog.at_level(logging.WARNING):
        keys = [s.key for s in ds]
    assert len(keys) == 8 and ds.damage.count == 1 and "b.tar at byte 0" in caplog.text


def test_frame_and_prompt_sampling():
    assert frame_indices(4, 8) == [0, 1, 2, 3]
    assert frame_indices(16, 4) == [2, 6, 10, 14]
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = frame_indices(30, 8, rng, must_include=[29])
        assert len(idx) == 8 and idx == sorted(set(idx)) and 29 in idx
        assert all(0 <= i < 30 for i in idx)
    s = make_sample(19)  # memory_qa video, pre-filled from two prompts on frames 3 and 4
    keep = sorted({0, *(p.frame for p in s.prompts)})
    sub = select_frames(s, keep).validate()
    assert sub.media.num_frames == len(keep) and sub.media.frames[1] == s.media.frames[keep[1]]
    assert sub.objects[1].masks[1] == s.objects[1].masks[keep[1]]
    assert [p.frame for p in sub.prompts] == [keep.index(p.frame) for p in s.prompts]
    with pytest.raises(ValueError, match="prompt"):
        select_frames(s, [i for i in range(s.media.num_frames) if i != s.prompts[0].frame])
    m = np.zeros((40, 50), bool)
    m[10:20, 5:30] = True
    for _ in range(100):
        x, y = sample_point(m, rng)
        assert m[int(y), int(x)]
        x1, y1, x2, y2 = sample_box(m, rng, jitter=0.1)
        assert abs(x1 - 5) <= 2.5 and abs(x2 - 30) <= 2.5 and abs(y1 - 10) <= 1 and abs(y2 - 20) <= 1
    kinds = collections.Counter()
    for i in range(200):
        t = make_sample(4 + 13 * (i % 20), "train")
        t = resample_prompts(t, rng, "point_box").validate()
        kinds[t.prompts[0].type] += 1
        p = t.prompts[0]
        mask = masks.decode(t.objects[p.object_id].masks[p.frame])
        if p.type == "point":
            assert mask[int(p.coords[1]), int(p.coords[0])]
    assert set(kinds) == {"point", "box"} and 70 <= kinds["point"] <= 130


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_shards(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["build", "synthetic", "--split", "train", "--max-samples", "600", "--max-count", "20", "--quiet"]
    cmd = [sys.executable, "-m", "pixelqa.data", *args]
    folder = tmp_path / "a" / "synthetic" / "train"
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "a")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(folder.glob("*.tar"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if killed:
        assert not (folder / "manifest.json").exists() and list(folder.glob(".progress-*"))
    subprocess.run([*cmd, "--out", str(tmp_path / "a")], check=True, capture_output=True)
    subprocess.run([*cmd, "--out", str(tmp_path / "b")], check=True, capture_output=True)
    assert _tars(folder) == _tars(tmp_path / "b" / "synthetic" / "train") and len(_tars(folder)) == 30
    assert not list(folder.glob("*.partial")) and not list(folder.glob(".progress-*"))


def test_ppm_frame_codec_stores_the_released_pixels(built, tmp_path):
    out, m, _ = built
    ppm = build_shards(
        "synthetic", ".", tmp_path, "train", max_samples=60, max_count=16, progress=False, frame_codec="ppm"
    )
    assert ppm["config"]["frame_codec"] == "ppm" and "frame_codec" not in m["config"]  # as released: not recorded
    assert ppm["num_bytes"] > 2 * m["num_bytes"]  # raw pixels against the demo's PNG frames
    keep = list(iter_records(sorted((out / "synthetic" / "train").glob("*.tar"))))
    raw = list(iter_records(sorted((tmp_path / "synthetic" / "train").glob("*.tar"))))
    assert [r["__key__"] for r in raw] == [r["__key__"] for r in keep]
    for a, b in zip(keep[::7], raw[::7]):
        sa, sb = Sample.from_record(a), Sample.from_record(b)
        assert sb.media.ext == "ppm" and all(f.startswith(b"P6") for f in sb.media.frames)
        assert np.array_equal(sb.decode_frames(), sa.decode_frames())  # the same pixels after decoding
        assert sb.objects == sa.objects and sb.turns == sa.turns
    loaded = [s.decode_frames() for s in itertools.islice(make_dataset([tmp_path / "synthetic" / "train"]), 4)]
    assert all(f.dtype == np.uint8 and f.ndim == 4 for f in loaded)  # the loader reads them as any other frames
    with pytest.raises(ValueError, match="frame_codec: got 'webp'"):
        build_shards("synthetic", ".", tmp_path / "x", "train", max_samples=2, progress=False, frame_codec="webp")


_PARENT_PID = os.getpid()


@register_source("unit_dies_in_a_worker")
def _dies(root: Path, split: str):
    """A converter that kills its build worker (a crash in native code looks the same to the parent)."""
    if os.getpid() != _PARENT_PID:
        os._exit(3)
    yield make_sample(0, "train")


def test_a_dead_build_worker_fails_the_build_instead_of_hanging(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BuildError, match="a build worker process died .*run the same command again") as caught:
        build_shards("unit_dies_in_a_worker", ".", tmp_path, "train", workers=2, progress=False)
    assert isinstance(caught.value.__cause__, BrokenProcessPool)


def test_builds_that_stop_early_in_workers_end_cleanly(built, tmp_path):
    import multiprocessing

    serial = build_shards("synthetic", ".", tmp_path / "serial", "train", max_samples=10, max_count=4, progress=False)
    for run in range(4):  # max_samples stops the build with worker tasks still in flight, each time
        out = tmp_path / f"w{run}"
        m = build_shards("synthetic", ".", out, "train", workers=2, max_samples=10, max_count=4, progress=False)
        assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in serial["shards"]]
        assert multiprocessing.active_children() == []  # every worker joined, none left running or unreaped


def test_a_build_that_stops_early_cancels_no_worker_task(tmp_path, monkeypatch):
    """Cancelling a future the executor had already queued, then shutting down, hangs for good on Python 3.11.2
    (Debian 12's; CPython gh-94440): the tasks in flight are waited for instead."""
    from concurrent.futures import Future

    cancelled = []
    real = Future.cancel
    monkeypatch.setattr(Future, "cancel", lambda self: cancelled.append(self) or real(self))
    m = build_shards("synthetic", ".", tmp_path, "train", workers=2, max_samples=10, max_count=4, progress=False)
    assert m["num_samples"] == 10 and cancelled == []
