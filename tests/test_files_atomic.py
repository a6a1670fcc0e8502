"""`pixelqa.files`: what a killed write leaves is cleaned or put back by the next one, and finished files get plain
modes (an export's model.safetensors was private, 0600, beside 0644 files)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_new_write_removes_the_temporaries_that_killed_writes_of_the_same_folder_left(tmp_path):
    from pixelqa.files import atomic_folder

    host = socket.gethostname()
    killed = tmp_path / f".out.tmp~{_dead_pid()}~{host}~abcd1234"  # an export killed mid-write: full size
    (killed / "sub").mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"\0" * 1024)
    running = tmp_path / f".out.tmp~{os.getppid()}~{host}~abcd1234"  # another writer, still at work
    elsewhere = tmp_path / f".out.tmp~{_dead_pid()}~other-node~abcd1234"  # another host's: cannot be told, kept
    other_target = tmp_path / f".other.tmp~{_dead_pid()}~{host}~abcd1234"  # another folder's: its own write cleans
    not_ours = tmp_path / ".out.abcd1234"  # not our naming (mkdtemp's of an older version included): kept
    for folder in (running, elsewhere, other_target, not_ours):
        folder.mkdir()
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", running.name, elsewhere.name, other_target.name, not_ours.name]
    )


def test_a_kill_between_the_two_renames_is_recovered(tmp_path):
    from pixelqa.files import atomic_folder, replaceable_folder

    # atomic_folder replaces OUT by renaming OUT -> .OUT.old, then the new folder -> OUT; a kill in between
    # leaves no OUT, only .OUT.old: the earlier export, whole
    old = tmp_path / ".out.old"
    old.mkdir()
    (old / "config.json").write_text("earlier export")
    assert not replaceable_folder(tmp_path / "out")  # put back first: a folder with files, not a free name
    assert (tmp_path / "out" / "config.json").read_text() == "earlier export" and not old.exists()

    old.mkdir()  # the same, met by a write itself: put back, then replaced as asked
    (tmp_path / "out").rename(old)
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("new export")
    assert (tmp_path / "out" / "config.json").read_text() == "new export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_written_private_get_plain_modes(tmp_path):
    from safetensors.torch import save_file

    from pixelqa.files import atomic_folder

    mask = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors creates files 0600
            (tmp / "config.json").write_text("{}")
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            (tmp / "run.sh").chmod(0o700)
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "run.sh": 0o744}


def test_atomic_file_writes_its_temporary_beside_the_target_and_removes_it_on_failure(tmp_path):
    from pixelqa.files import atomic_file

    seen = []

    def fail(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        atomic_file(tmp_path / "a.ckpt", fail, durable=True)
    assert seen[0].parent == tmp_path and list(tmp_path.iterdir()) == []
    atomic_file(tmp_path / "a.ckpt", lambda tmp: tmp.write_bytes(b"whole"), durable=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"] and (tmp_path / "a.ckpt").read_bytes() == b"whole"
