"""`python -m pixelqa.export` to a folder it cannot write in fails in one line with exit 2 before the model loads
(minutes at 7B), not with a traceback after it."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_output_parent_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, code):
    from pixelqa import export

    parent = tmp_path / "ro"
    parent.mkdir()
    real_mkdtemp = tempfile.mkdtemp

    def refuse(*args, dir=None, **kwargs):  # a read-only mount (tests run as root: chmod would not stop them)
        if dir is not None and os.path.realpath(dir) == os.path.realpath(parent):
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    def load_any(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(export, "load_any", load_any)
    assert export.main([str(tmp_path / "run.ckpt"), str(parent / "new" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out: cannot write in") and str(parent) in err and err.count("\n") == 1
    assert list(parent.iterdir()) == []


def test_a_writable_output_parent_passes_and_is_left_as_it_was(tmp_path):
    from pixelqa.export import check_out

    assert check_out(tmp_path / "a" / "b" / "out") == tmp_path / "a" / "b" / "out"
    assert list(tmp_path.iterdir()) == []  # nothing made: the missing folders are made by the write itself


def test_a_full_disk_during_the_write_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from pixelqa import export

    def full(*args, **kwargs):  # what safetensors' Rust writer raises on a full tmpfs
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export, "load_any", lambda *a, **k: object())
    monkeypatch.setattr(export, "export", full)
    assert export.main([str(tmp_path / "run.ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err and "Traceback" not in err
