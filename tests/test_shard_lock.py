"""A shard folder is locked while a build writes it: a second build fails at once naming the holder, or waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixelqa.data.shards import BuildLocked, build_lock, build_shards


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_a_held_lock_fails_a_second_build_naming_the_holder(tmp_path):
    folder = tmp_path / "synthetic" / "val"
    folder.mkdir(parents=True)
    with build_lock(folder):
        with pytest.raises(BuildLocked, match=f"pid {os.getpid()} on host"):
            build_shards("synthetic", ".", tmp_path, "val", max_samples=4, progress=False)
        # a build of another layout would write the same shard names: refused too (tests/test_concurrency.py)
        with pytest.raises(BuildLocked, match="with --num-nodes 1"):
            build_shards("synthetic", ".", tmp_path, "val", node_rank=1, num_nodes=2, max_samples=4, progress=False)
    assert build_shards("synthetic", ".", tmp_path, "val", max_samples=4, progress=False)["num_samples"] == 4


@pytest.mark.slow
def test_two_concurrent_build_processes_never_interleave(tmp_path, capsys):
    args = ["build", "synthetic", "--split", "train", "--max-samples", "300", "--max-count", "30", "--quiet"]
    cmd = [sys.executable, "-m", "pixelqa.data", *args, "--out", str(tmp_path / "a")]
    folder = tmp_path / "a" / "synthetic" / "train"
    folder.mkdir(parents=True)
    from pixelqa.data.__main__ import main

    with build_lock(folder), pytest.raises(SystemExit) as exit_info:  # held here: the CLI fails at once, status 2
        main([*args, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"pid {os.getpid()}" in err and err.count("\n") == 1
    procs = [subprocess.Popen([*cmd, "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.5)  # staggered, so that the second usually arrives while the first writes
    procs.append(subprocess.Popen([*cmd, "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("300 samples in 10 shards" in out for out, _ in outs)
    subprocess.run(
        [sys.executable, "-m", "pixelqa.data", *args, "--out", str(tmp_path / "b")], check=True, capture_output=True
    )
    assert _tars(folder) == _tars(tmp_path / "b" / "synthetic" / "train")  # as one build alone writes them
