"""Folder locks between processes: one process at a time writes a folder (a fit's output_dir, a suite's results,
a grid, a shard build).

A lock is an exclusive `flock` on a file in the folder, `<folder>/.pixelqa-<what>.lock` (or a name the caller
picks), taken without waiting unless asked to wait. The kernel drops it when its holder exits, however it exits
(kill -9 included), so a lock file left behind never blocks anyone; the file itself stays (unlinking it would let
two processes lock two different files of one name). The holder writes who it is into the file (pid, host, start
time, then its command line on a second line); a refused process names them in its one-line error.

Within one process a lock is re-entrant unless the caller says otherwise (flock locks belong to an open file, so a
second open of the same file by the same process would refuse it): nested takes of one lock share one descriptor
(a count), so that a grid that collects under its own lock, or a process running two fits of one folder one after
the other, is not refused by itself. A caller whose second take in one process is a second writer (two builds of
one node's shards) passes `reentrant=False` and is refused like another process. Descriptors are not
inherited across exec (a subprocess such as a grid's job does not keep its parent's lock); a fork keeps it while
the child lives, which only lengthens the hold.

    with folder_lock(folder, "suite", advice="..."):  ...     # released at the end of the block
    hold(output_dir, "fit", advice="...")                      # held until the process exits
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pixelqa.config import RecipeError

DEFAULT_ADVICE = "wait for it to finish, or use another folder"
COMMAND_CHARS = 120  # of the holder's command line shown in an error (the lock file keeps it whole)


class FolderLocked(RecipeError):
    """Another process holds a folder's lock; the message names the folder, the holder and what to do."""


@dataclass
class _Held:
    """This process's open lock file and how many takes hold it."""

    fd: int
    count: int


_HELD: dict[str, _Held] = {}  # real path of a lock file -> this process's descriptor and how many takes hold it
_GUARD = threading.Lock()  # the table above, between threads of this process


def lock_path(folder: str | os.PathLike, what: str) -> Path:
    """The lock file of `what` (fit, suite, grid, ...) in `folder`."""
    return Path(folder) / f".pixelqa-{what}.lock"


def _key(path: Path) -> str:
    """The table key of a lock file: one lock whatever path (relative, through a link) names it."""
    return os.path.realpath(path)


def _command() -> str:
    """This process's command line as typed (`python -m pixelqa.fit ...`, not the module's file), on one line."""
    # one line: the holder's record is read line by line (`python -c` code spans several)
    return " ".join(shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]).split())


def _holder(fd: int) -> str:
    """Who holds the lock whose file is open as `fd`, as its holder wrote it (one line)."""
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    first, _, rest = text.partition("\n")
    command = rest.partition("\n")[0].strip().removeprefix("command: ")
    if len(command) > COMMAND_CHARS:
        command = command[: COMMAND_CHARS - 3] + "..."
    who = first.strip() or "a process that has not said who"
    return f"{who} ({command})" if command else who


def _stamp(fd: int) -> None:
    """Write who holds the lock into its file: read by the processes it refuses."""
    os.ftruncate(fd, 0)
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"pid {os.getpid()} on host {socket.gethostname()} since {since}\ncommand: {_command()}\n"
    os.pwrite(fd, text.encode(), 0)


def take(
    path: str | os.PathLike,
    subject: str | None = None,
    advice: str = DEFAULT_ADVICE,
    busy: str = "in use",
    wait: bool = False,
    error: type[Exception] = FolderLocked,
    on_wait: Callable[[str], None] | None = None,
    reentrant: bool = True,
) -> Path:
    """Take the lock file `path` (its folder is created); held by another process: `error("<subject> is <busy> by
    <holder> (lock <path>); <advice>")`, or with `wait` block until it is free (`on_wait(holder)` first).
    Re-entrant within this process unless `reentrant` is false; every take needs its `release`."""
    path = Path(path)
    subject = subject or str(path.parent)
    key = _key(path)
    with _GUARD:
        if key in _HELD and reentrant:
            _HELD[key].count += 1
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise error(f"{subject} is {busy} by {holder} (lock {path}); {advice}") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _stamp(fd)
    except BaseException:
        os.close(fd)
        raise
    with _GUARD:
        _HELD[key] = _Held(fd, 1)
    return path


def release(path: str | os.PathLike) -> None:
    """Give back one take of the lock file `path`; the last one closes it, which drops the lock."""
    key = _key(Path(path))
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[key]
    os.close(held.fd)  # the file stays: unlinking it would race with a process opening it to take the lock


def holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock file `path` now (this process included), or None when nobody does. A probe: the answer
    can be stale at once unless every taker of the lock takes it under a lock the caller holds."""
    path = Path(path)
    with _GUARD:
        own = _HELD.get(_key(path))
        if own is not None:
            return _holder(own.fd)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: never refuses a holder of the same kind
        except BlockingIOError:
            return _holder(fd)
        return None
    finally:
        os.close(fd)  # drops the probe's shared lock; another descriptor's lock on the file is not touched


@contextmanager
def file_lock(
    path: str | os.PathLike,
    subject: str | None = None,
    advice: str = DEFAULT_ADVICE,
    busy: str = "in use",
    wait: bool = False,
    error: type[Exception] = FolderLocked,
    on_wait: Callable[[str], None] | None = None,
    reentrant: bool = True,
) -> Iterator[Path]:
    """Hold the lock file `path` for the block (see `take`)."""
    taken = take(path, subject, advice, busy, wait, error, on_wait, reentrant)
    try:
        yield taken
    finally:
        release(taken)


@contextmanager
def folder_lock(
    folder: str | os.PathLike,
    what: str,
    advice: str = DEFAULT_ADVICE,
    wait: bool = False,
    error: type[Exception] = FolderLocked,
) -> Iterator[Path]:
    """Hold `folder`'s lock of `what` for the block; held by another process: `error` naming the folder, the holder
    and `advice`, or with `wait` block until it is free."""
    with file_lock(lock_path(folder, what), str(folder), advice, wait=wait, error=error) as path:
        yield path


def hold(
    folder: str | os.PathLike, what: str, advice: str = DEFAULT_ADVICE, error: type[Exception] = FolderLocked
) -> Path:
    """Take `folder`'s lock of `what` for the rest of this process's life (the kernel drops it at exit); held by
    another process: `error` naming the folder, the holder and `advice`. Returns the lock file."""
    return take(lock_path(folder, what), str(folder), advice, error=error)
