"""Checkpoint files appear whole under their name or not at all, whatever stops the save: the temporary is written
beside the checkpoint (not in $TMPDIR, maybe another filesystem), a failed write leaves nothing, a full disk is one
line with exit 2, and last.ckpt never names a missing file."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def tmpdir_elsewhere(tmp_path, monkeypatch):
    """$TMPDIR pointed at an empty folder of its own (node-local /tmp on a cluster): nothing may be left there."""
    import tempfile

    other = tmp_path / "node-local-tmp"
    other.mkdir()
    monkeypatch.setenv("TMPDIR", str(other))
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    return other


def test_a_checkpoint_is_written_beside_its_target_then_renamed(tmp_path, tmpdir_elsewhere, monkeypatch):
    from pixelqa.train import checkpoint_io
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO

    written: list[Path] = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        written.append(Path(f.name))
        assert not (tmp_path / "ckpts" / "step000010.ckpt").exists()  # the final name appears only when whole
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", spy)
    target = tmp_path / "ckpts" / "step000010.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 10, "w": torch.ones(3)}, target)
    assert len(written) == 1 and written[0].parent == target.parent and written[0].name.startswith(".step000010.")
    assert torch.load(target, weights_only=True)["global_step"] == 10
    assert sorted(p.name for p in target.parent.iterdir()) == ["step000010.ckpt"]  # the temporary was renamed
    assert _left_in(tmpdir_elsewhere) == []
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _left_in(folder: Path) -> list[str]:
    """What is in a $TMPDIR besides torch's compile cache (torch makes that folder on its own)."""
    return [p.name for p in folder.iterdir() if not p.name.startswith("torchinductor")]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _partial_then(error: BaseException):
    """A torch.save that writes the start of a zip file, then fails (a kill, a full disk, a broken mount)."""

    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"\0" * 4096)
        f.flush()
        raise error

    return save


def test_a_write_failing_midway_leaves_neither_the_checkpoint_nor_its_temporary(
    tmp_path, tmpdir_elsewhere, monkeypatch
):
    from pixelqa.train import checkpoint_io
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO

    folder = tmp_path / "ckpts"
    monkeypatch.setattr(checkpoint_io.torch, "save", _partial_then(RuntimeError("writer died")))
    with pytest.raises(RuntimeError, match="writer died"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 15}, folder / "step000015.ckpt")
    assert list(folder.iterdir()) == [] and _left_in(tmpdir_elsewhere) == []
    # a step saved again after a resume: the earlier whole file stays until the new one is whole
    (folder / "step000015.ckpt").write_bytes(b"earlier, whole")
    with pytest.raises(RuntimeError):
        AtomicCheckpointIO().save_checkpoint({"global_step": 15}, folder / "step000015.ckpt")
    assert [p.name for p in folder.iterdir()] == ["step000015.ckpt"]
    assert (folder / "step000015.ckpt").read_bytes() == b"earlier, whole"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_disk_error_is_a_one_line_user_error(tmp_path, monkeypatch, code):
    from pixelqa.config import RecipeError
    from pixelqa.train import checkpoint_io
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO

    monkeypatch.setattr(checkpoint_io.torch, "save", _partial_then(OSError(code, os.strerror(code))))
    target = tmp_path / "ckpts" / "step000010.ckpt"
    with pytest.raises(RecipeError) as caught:
        AtomicCheckpointIO().save_checkpoint({"global_step": 10}, target)
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and "ckpt=last" in message
    assert list(target.parent.iterdir()) == []


def test_a_full_disk_met_inside_torch_zip_writer_is_recognised(tmp_path, monkeypatch):
    """torch.save into a file object that fills the disk mid-archive raises a RuntimeError ("unexpected pos")
    while handling the OSError(ENOSPC): still the one-line error, not a traceback (seen on a full tmpfs)."""
    from pixelqa.config import RecipeError
    from pixelqa.train import checkpoint_io
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO

    def save(obj, f, *args, **kwargs):
        try:
            _partial_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))(obj, f)
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 56850496 vs 56850384")

    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    with pytest.raises(RecipeError, match="no space left on the device"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 10}, tmp_path / "step000010.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_saves_are_removed_and_live_ones_kept(tmp_path):
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO

    folder = tmp_path / "ckpts"
    folder.mkdir()
    host = socket.gethostname()
    dead = folder / f".step000010.ckpt.tmp~{_dead_pid()}~{host}~abcd1234.ckpt"
    live = folder / f".step000010.ckpt.tmp~{os.getppid()}~{host}~abcd1234.ckpt"  # a save still in progress
    foreign = folder / f".step000010.ckpt.tmp~{_dead_pid()}~another-node~abcd1234.ckpt"  # cannot be told: kept
    mine = folder / "notes.txt"
    for path in (dead, live, foreign, mine):
        path.write_bytes(b"x")
    AtomicCheckpointIO().save_checkpoint({"global_step": 20}, folder / "step000020.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, foreign.name, mine.name, "step000020.ckpt"])


def _recipe(tmp_path: Path, *extra: str):
    from pixelqa.config import load_recipe, to_object

    return to_object(load_recipe(["recipe=stage3", f"output_dir={tmp_path / 'run'}", "tracking=none", *extra]))


def test_fit_trains_with_the_atomic_checkpoint_io(tmp_path):
    from pixelqa.fit import build_trainer
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO

    trainer = build_trainer(_recipe(tmp_path), None, [], 1)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_last_ckpt_never_names_a_missing_file_with_one_checkpoint_kept(tmp_path, monkeypatch):
    """Lightning removes last.ckpt before linking it anew, and with keep_checkpoints=1 drops the step file it points
    to before relinking it: a kill in between left a dangling last.ckpt, so nothing to resume."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from pixelqa.fit import build_trainer
    from pixelqa.train.callbacks import build_callbacks

    recipe = _recipe(
        tmp_path, "trainer.keep_checkpoints=1", "trainer.checkpoint_every_n_steps=1", "trainer.max_steps=4"
    )
    ckpts = tmp_path / "run" / "checkpoints"
    last = ckpts / "last.ckpt"
    seen, dangling = [], []

    def watched(fn):
        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            if last.is_symlink() or last.exists():
                seen.append(True)
            if seen and not last.exists():  # exists() follows the link: False for a missing or dangling one
                dangling.append(f"{fn.__name__}{args}")
            return result

        return call

    for name in ("remove", "unlink", "symlink", "replace", "rename"):
        monkeypatch.setattr(os, name, watched(getattr(os, name)))
    callbacks = build_callbacks(recipe, ckpts, None)[:1]
    trainer = build_trainer(recipe, None, callbacks, 1)
    trainer.fit(BoringModel())
    assert seen and dangling == []
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000004.ckpt"]
    assert os.readlink(last) == "step000004.ckpt"


@pytest.mark.slow
def test_a_full_disk_during_a_save_exits_2_in_one_line_and_leaves_no_partial_checkpoint(
    tmp_path, tmpdir_elsewhere, monkeypatch, capsys
):
    from pixelqa.fit import main

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "state_dict" in obj:  # a checkpoint: the disk fills during its write
            _partial_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.chdir(tmp_path)
    args = [
        "recipe=stage3",
        f"data.shards={tmp_path / 'shards'}",
        "data.synthetic_train=8",
        "data.synthetic_val=4",
        "data.val_samples=4",
        "data.batch_size=2",
        "trainer.max_steps=2",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking=none",
        f"output_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("recipe error: checkpoint ") and "no space left" in line and "ckpt=last" in line
    ckpts = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpts.iterdir() if p.name != "mlflow_run_id.txt"] == []  # no partial file, no temporary
    assert _left_in(tmpdir_elsewhere) == []
