"""A 3-task shard build as submitit jobs on this machine: one task is killed mid-build, the rerun resubmits only
that task, and the shards come out byte-identical to an uninterrupted in-process build of the same partition."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from pixelqa.data.__main__ import main as data_main
from pixelqa.data.mixture import MixtureEntry, verify_shards
from pixelqa.data.shards import build_shards, sha256_file
from pixelqa.launch.status import read_status

NODES = 3
PER_NODE = 300  # samples per task: enough shards that a task is still running when its first shard appears
BUILD = ["build", "synthetic", "--out", "shards", "--max-samples", str(PER_NODE), "--max-count", "4", "--quiet"]


def _until(predicate, timeout: float, what: str, poll: float = 0.005):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _recorded_shards(progress: Path) -> int:
    """Complete shards a build task's progress file lists (0 while it is absent or being replaced)."""
    try:
        return len(json.loads(progress.read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _tars(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("*.tar"))}


def test_a_killed_build_task_is_resubmitted_alone_and_resumes_byte_identically(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for rank in range(NODES):  # independent truth: the same partition built here, uninterrupted
        build_shards("synthetic", ".", tmp_path / "ref", max_samples=PER_NODE, max_count=4, node_rank=rank, num_nodes=3)
    reference = _tars(tmp_path / "ref" / "synthetic" / "train")
    assert len(reference) == NODES * PER_NODE // 4

    data_main([*BUILD, "--num-nodes", str(NODES), "launcher=subprocess"])
    jobs = tmp_path / "shards" / ".jobs" / "build-synthetic-train"
    folder = tmp_path / "shards" / "synthetic" / "train"
    status = _until(lambda: read_status(jobs / "task-001.json"), 120, "task 1 to start")
    _until(lambda: (folder / "synthetic-train-000001.tar").is_file(), 120, "task 1's first shard")
    # a shard counts for a resume once the task's progress file lists it (written just after the shard's rename)
    _until(lambda: _recorded_shards(folder / ".progress-node001-of003.json"), 120, "task 1's progress record")
    os.kill(int(status["pid"]), signal.SIGKILL)
    assert not (folder / "manifest-node001-of003.json").exists(), "task 1 finished before it could be killed"

    verify = _until(
        lambda: (s := read_status(jobs / "verify.json")) and s["state"] in ("DONE", "FAILED") and s, 120, "verify"
    )
    assert verify["state"] == "FAILED" and "task 1 died" in verify["error"]
    for rank in (0, 2):  # the other tasks finish regardless
        task = jobs / f"task-{rank:03d}.json"
        _until(
            lambda task=task: (read_status(task) or {}).get("state") == "DONE", 120, f"task {rank}"
        )  # may not exist yet
        assert (folder / f"manifest-node{rank:03d}-of003.json").is_file()
    capsys.readouterr()

    data_main([*BUILD, "--num-nodes", str(NODES), "launcher=subprocess", "launcher.wait=true"])
    out = capsys.readouterr().out
    assert "submitted task 1/3" in out and "task 0/3" not in out and "task 2/3" not in out
    assert "shard build DONE" in out
    task1 = json.loads((jobs / "state.json").read_text())["tasks"]["1"]
    assert task1["attempt"] == 2
    log = "".join(p.read_text() for p in (jobs / "submitit" / task1["job_id"]).glob("*_log.*"))
    assert "resuming synthetic/train after" in log  # the complete shards of the killed attempt were kept
    assert _tars(folder) == reference
    assert not list(folder.glob("*.partial"))

    # The verify step compares manifests with the files: a changed byte is reported.
    entries = [MixtureEntry("synthetic", "train")]
    assert verify_shards(entries, "shards", NODES) == []
    shard = folder / "synthetic-train-000004.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    (problem,) = verify_shards(entries, "shards", NODES)
    assert "synthetic-train-000004.tar: size or SHA-256 differs" in problem
    assert verify_shards(entries, "shards", 2)[0].startswith("synthetic/train: no manifest-node000-of002.json")
