"""Atomic writes that keep plain file modes: a file or a folder appears whole under its name, or not at all.

A leaf module (the standard library only), so every layer may use it: predict's outputs, the web demo's downloads,
`save_pretrained` and `export`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_file(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp)` on a temporary file beside `path` (same suffix), then rename it onto `path`; the file gets
    a plain file's mode (0666 less the umask), not the private 0600 of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replaceable_folder(directory: str | os.PathLike, own: Callable[[str], bool] | None = None) -> bool:
    """Whether replacing `directory` whole loses nothing: it is absent, empty, or every entry's name is `own`."""
    target = Path(directory)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        return False
    if not target.exists():
        return True
    return all(own is not None and own(child.name) for child in target.iterdir())


@contextmanager
def atomic_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `directory` that replaces it when the block ends without error (removed otherwise).

    An existing `directory` is replaced whole: callers decide whether it may be (`replaceable_folder`); a file or a
    link there is refused here."""
    target = Path(directory)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{str(target)!r} exists and is not a folder; expected a folder to replace or a new name")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the finished folder gets a plain folder's mode
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
