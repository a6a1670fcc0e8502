"""Checkpoints written whole or not at all, with disk errors said in one line and a failed write ending every rank.

Lightning's `TorchCheckpointIO` serialises into memory and lets fsspec write a temporary file in $TMPDIR, then
moves it onto the checkpoint's name. With $TMPDIR on another filesystem than output_dir (node-local /tmp, shared
run folders: the usual cluster layout) that move is a copy, and a kill or a full disk during it leaves a truncated
`stepN.ckpt` under its final name; every kill during a save also leaks a checkpoint-sized file in $TMPDIR.
`AtomicCheckpointIO` writes the temporary beside the checkpoint (`pixelqa.files.atomic_file`: same folder, fsync,
`os.replace`), removes it when the write fails, and removes those that killed saves of this host left. It applies
where Lightning's CheckpointIO writes the file: single device, DDP, and FSDP with full state dicts (what
`pixelqa.train.strategies` builds), where rank 0 writes one file.

A DeepSpeed checkpoint is a folder every rank writes its part of. `AtomicDeepSpeedStrategy` has them write into one
temporary folder beside the checkpoint (`save_folder_on_every_rank`); once every rank has written, rank 0 renames it
into place (`pixelqa.files.install_folder`: an older folder of that name renamed aside, the new one in, the old one
removed). A kill mid-write leaves a `.NAME.tmp~...` folder, which no resume picks (`ckpt=last` follows last.ckpt,
relinked only after a save) and which the run's first save in that folder removes, saying so.

A write that fails on one rank (disk full, permissions) ends every rank with the error (`settle`): the others would
otherwise wait at the barrier after the write until the process group times out (DDP: rank 0 writes alone).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

from pixelqa.config import RecipeError
from pixelqa.files import (
    atomic_file,
    disk_error,
    folder_temp,
    install_folder,
    remove_folder,
    remove_stale_temps,
)
from pixelqa.train.datamodule import EveryRankError


class CheckpointWriteError(RecipeError):
    """A checkpoint that could not be written for a reason the user can fix (space, quota, permissions)."""


class PeerCheckpointError(CheckpointWriteError, EveryRankError):
    """A checkpoint write that failed on another rank: this one stops too (rank 0 says it, the others exit quietly;
    the failing rank says its own error)."""


def write_error(exc: BaseException, target: Path) -> BaseException:
    """A disk error met writing `target` as a one-line `CheckpointWriteError`; any other error as it is."""
    what = disk_error(exc)
    if what is None:
        return exc
    return CheckpointWriteError(
        f"checkpoint {target}: not written ({what}); nothing partial is left under that name. Free space in or fix "
        f"the permissions of {target.parent} (or choose another output_dir), then resume with ckpt=last"
    )


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
            error = write_error(exc, target)
            if error is exc:
                raise
            raise error from None


def _torch_save(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save through a Python file object: a full disk then raises OSError(ENOSPC), which torch.save given a
    path reports as a RuntimeError without an errno."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _one_line(exc: BaseException) -> str:
    """What an error says, in one line (its type named unless it is one of ours, which says itself)."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return said if isinstance(exc, RecipeError) and said else f"{type(exc).__name__}: {said}".rstrip(": ")


def settle(error: BaseException | None, what: str, value: Any = None) -> list[Any]:
    """Every rank's `value`, by rank, once every rank has got here: a collective (every rank calls it, it is also a
    barrier). When the step before failed on any rank (`error`), every rank raises instead: a failing one its own
    `error`, the others a `PeerCheckpointError` naming the failed ranks and what the first one said."""
    said = None if error is None else _one_line(error)
    gathered: list[Any] = [(said, value)]
    if _distributed():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (said, value))
    failed = [(rank, message) for rank, (message, _) in enumerate(gathered) if message is not None]
    if error is not None:
        raise error
    if failed:
        ranks = ", ".join(str(rank) for rank, _ in failed)
        raise PeerCheckpointError(f"{what}: the write failed on rank {ranks} ({failed[0][1]}); every rank stops")
    return [v for _, v in gathered]


def remove_killed_saves(folder: Path) -> list[Path]:
    """Remove the temporaries that saves killed before this process left in `folder` (their writer, a process of
    this host, has exited), saying so on stderr; returns them."""
    removed = remove_stale_temps(folder)
    if removed:
        names = ", ".join(sorted(p.name for p in removed))
        print(f"note: removed what killed checkpoint saves left in {folder}: {names}", file=sys.stderr, flush=True)
    return removed


def save_folder_on_every_rank(
    target: Path, write: Callable[[Path], object], after_failure: Callable[[], object], clean: bool = True
) -> None:
    """Write the checkpoint folder `target` whole or not at all: every rank runs `write(tmp)` into one temporary
    folder beside it (rank 0 makes it and, with `clean`, first removes what killed saves left: `remove_killed_saves`);
    once every rank has written, rank 0 renames it into place (`install_folder`, replacing an older folder of that
    name). A failure on any rank leaves `target` as it was, removes the temporary and ends every rank with the error
    (`settle`); the failing rank calls `after_failure` first (to meet the others where `write` makes them wait)."""
    what = f"checkpoint {target}"
    rank, error, tmp = _rank(), None, None
    if rank == 0:
        try:
            if clean:
                remove_killed_saves(target.parent)
            tmp = folder_temp(target)
        except OSError as exc:
            error = write_error(exc, target)
    tmp = Path(settle(error, what, None if tmp is None else str(tmp))[0])  # rank 0's folder, for every rank
    try:
        error = None
        try:
            write(tmp)
        except Exception as exc:  # noqa: BLE001  (any failure: every rank must hear of it, not wait for this one)
            error = write_error(exc, target)
            after_failure()
        settle(error, what)
        error = None
        if rank == 0:
            try:
                install_folder(tmp, target, durable=True)
            except OSError as exc:
                error = write_error(exc, target)
        settle(error, what)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy whose checkpoint folders appear whole under their name or not at all (see the
    module doc), and whose removal of a checkpoint folder never leaves part of it under its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any | None = None) -> None:
        """DeepSpeed's save of every rank into a temporary folder, renamed into place once all have written."""
        target = Path(os.fspath(self.broadcast(filepath)))  # rank 0's name for every rank, as Lightning does
        save = super().save_checkpoint
        save_folder_on_every_rank(
            target,
            lambda tmp: save(checkpoint, tmp, storage_options),
            self._meet_engine_barrier,
            clean=target.parent not in self._cleaned,
        )
        self._cleaned.add(target.parent)

    def _meet_engine_barrier(self) -> None:
        """After this rank's DeepSpeed save failed: wait at the barrier that ends DeepSpeed's save, where the other
        ranks wait for this one. The engine's save (DeepSpeed 0.19) meets the ranks before any file is written (a
        barrier, the tag check) and once after the last one; a write failing in between leaves one to meet."""
        if _distributed():
            torch.distributed.barrier()

    def remove_checkpoint(self, filepath: Any) -> None:
        """Rank 0 removes the checkpoint folder (renamed to a temporary first: `pixelqa.files.remove_folder`)."""
        path = Path(os.fspath(filepath))
        if not self.is_global_zero:
            return
        if path.is_dir() and not path.is_symlink():
            remove_folder(path)
        else:
            path.unlink(missing_ok=True)
