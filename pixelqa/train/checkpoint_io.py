"""Checkpoint files written whole or not at all, with disk errors said in one line.

Lightning's `TorchCheckpointIO` serialises into memory and lets fsspec write a temporary file in $TMPDIR, then
moves it onto the checkpoint's name. With $TMPDIR on another filesystem than output_dir (node-local /tmp, shared
run folders: the usual cluster layout) that move is a copy, and a kill or a full disk during it leaves a truncated
`stepN.ckpt` under its final name; every kill during a save also leaks a checkpoint-sized file in $TMPDIR.
`AtomicCheckpointIO` writes the temporary beside the checkpoint (`pixelqa.files.atomic_file`: same folder, fsync,
`os.replace`), removes it when the write fails, and removes those that killed saves of this host left.

It applies where Lightning's CheckpointIO writes the file (single device, DDP); DeepSpeed and FSDP write their own
checkpoint folders (`pixelqa.fit.build_trainer` leaves them their writers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pixelqa.config import RecipeError
from pixelqa.files import atomic_file, disk_error, remove_stale_temps


class CheckpointWriteError(RecipeError):
    """A checkpoint that could not be written for a reason the user can fix (space, quota, permissions)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes through a temporary file beside the checkpoint and renames it into place."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write `checkpoint` to `path` atomically; a disk error becomes a `CheckpointWriteError` (one line)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        target = Path(os.fspath(path))
        folder = target.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if folder not in self._cleaned:  # once per folder: temporaries of saves killed before this process
                remove_stale_temps(folder)
                self._cleaned.add(folder)
            atomic_file(target, lambda tmp: _torch_save(checkpoint, tmp), durable=True)
        except (OSError, RuntimeError) as exc:  # RuntimeError: torch's zip writer, failing after an OSError
            what = disk_error(exc)
            if what is None:
                raise
            raise CheckpointWriteError(
                f"checkpoint {target}: not written ({what}); nothing partial is left under that name. Free space in "
                f"or fix the permissions of {folder} (or choose another output_dir), then resume with ckpt=last"
            ) from None


def _torch_save(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save through a Python file object: a full disk then raises OSError(ENOSPC), which torch.save given a
    path reports as a RuntimeError without an errno."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)
