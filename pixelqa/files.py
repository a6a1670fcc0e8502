"""Atomic writes that keep plain file modes: a file or a folder appears whole under its name, or not at all.

A leaf module (the standard library only), so every layer may use it: predict's outputs, the web demo's downloads,
`save_pretrained`, `export` and the training checkpoints.

Temporaries are written beside their target (a rename within one folder is atomic; one across filesystems is a
copy that a kill leaves half done) and named `.NAME.tmp~PID~HOST~XXXXXXXX[.suffix]`: a later write removes those
whose writer, a process of this host, has exited (`remove_stale_temps`). One of another host is left alone: whether
it is still in use cannot be told from here.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp~"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp~(?P<pid>\d+)~(?P<host>[^~/]*)~[a-z0-9_]+(?P<suffix>(\.[^~/]*)?)$")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# Errors a user can act on (space, quota, a read-only or foreign folder): said in one line, not as a traceback.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_error(exc: BaseException) -> str | None:
    """What a disk error means to a user ("no space left on the device", ...), or None for any other error. The
    exceptions `exc` was raised from or while handling count too (torch.save reports a full disk met inside its
    zip writer as a RuntimeError raised while handling the OSError), and so does a Rust writer's io error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return DISK_ERRNOS[current.errno]
        rust = _RUST_OS_ERROR.search(str(current))  # safetensors' writer reports an io error as "... (os error 28)"
        if rust is not None and int(rust[1]) in DISK_ERRNOS:
            return DISK_ERRNOS[int(rust[1])]
        current = current.__cause__ or current.__context__
    return None


def _host() -> str:
    return socket.gethostname().replace("~", "-").replace("/", "-")


def temp_prefix(target: Path) -> str:
    """The name prefix of this process's temporaries for `target` (see the module doc)."""
    return f".{target.name}{TEMP_MARK}{os.getpid()}~{_host()}~"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is running: it exists (another user's counts) and is no zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OSError, OverflowError):  # not a process id at all
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS), or the process ended meanwhile: as kill said
        return True
    return state not in ("Z", "X")


def stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Temporaries in `folder` (of the target `name`, or of any) whose writer, a process of this host, has exited."""
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    host, found = _host(), []
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or (name is not None and m["name"] != name) or m["host"] != host:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and not pid_alive(pid):
            found.append(entry)
    return found


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove what `stale_temps` finds (a kill during an earlier write leaves them, full size); returns them."""
    found = stale_temps(folder, name)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to the disk; a filesystem that cannot sync a folder is let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_file(path: str | os.PathLike, write: Callable[[Path], object], durable: bool = False) -> Path:
    """Run `write(tmp)` on a temporary file beside `path` (same suffix), then rename it onto `path`; the file gets
    a plain file's mode (0666 less the umask), not the private 0600 of a temporary file. `durable` syncs the file
    to the disk before the rename and the folder after it (a crash then leaves the old or the new file, whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        if durable:
            _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)
    return path


def atomic_symlink(source: str | os.PathLike, link: str | os.PathLike) -> Path:
    """Point `link` at `source` (relative to the link's folder) by renaming a new link onto it: at every moment
    `link` names the old target or the new one, never nothing. A folder at `link` (not a link) is removed first."""
    link = Path(link)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    tmp = link.with_name(temp_prefix(link) + uuid.uuid4().hex[:8])
    os.symlink(os.path.relpath(source, link.parent), tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return link


class FolderTaken(FileExistsError):
    """`atomic_folder`'s target was written by another process while this one wrote its own: nothing replaced."""


# what a rename onto a folder another process filled meanwhile fails with (or onto a file or a link put there)
_TAKEN_ERRNOS = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


def _taken(target: Path) -> FolderTaken:
    """The error of a write that found `target` written by another process."""
    return FolderTaken(f"{str(target)!r} was written by another process meanwhile; this write was dropped")


def _rename_new(tmp: Path, target: Path) -> None:
    """Rename the folder `tmp` to `target`, which must be absent or an empty folder: rename(2) replaces an empty
    folder but not a full one, so a folder another process finished there meanwhile is never replaced."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in _TAKEN_ERRNOS:
            raise _taken(target) from None
        raise


def _old_name(target: Path) -> Path:
    """Where `atomic_folder` keeps the replaced folder between its two renames."""
    return target.with_name(f".{target.name}.old")


def recover_folder(directory: str | os.PathLike) -> Path | None:
    """Put back a folder that a kill between `atomic_folder`'s two renames left only as `.NAME.old` (said on
    stderr); returns it, or None when there was nothing to recover."""
    target = Path(directory)
    old = _old_name(target)
    if target.exists() or target.is_symlink() or not old.is_dir() or old.is_symlink():
        return None
    os.replace(old, target)
    print(f"note: restored {target} from {old}, left by a write killed while replacing it", file=sys.stderr)
    return target


def foreign_entries(directory: str | os.PathLike, own: Callable[[str], bool] | None = None) -> list[str]:
    """The names in the folder `directory` that are not `own` (sorted; [] for an absent or empty folder). A folder
    a killed replacement left as `.NAME.old` is put back first (`recover_folder`)."""
    target = Path(directory)
    recover_folder(target)
    if not target.is_dir() or target.is_symlink():
        return []
    return sorted(child.name for child in target.iterdir() if own is None or not own(child.name))


def replaceable_folder(directory: str | os.PathLike, own: Callable[[str], bool] | None = None) -> bool:
    """Whether replacing `directory` whole loses nothing: it is absent, empty, or every entry's name is `own`
    (a folder a killed replacement left as `.NAME.old` is put back first: `recover_folder`)."""
    target = Path(directory)
    recover_folder(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        return False
    return not foreign_entries(target, own)


def _homes() -> list[Path]:
    """The user's home folder as $HOME names it and as the password database does (they can differ: a `HOME=`
    set for one command), each resolved."""
    homes = []
    try:
        homes.append(Path.home())
    except (RuntimeError, KeyError, OSError):  # no HOME and no password entry
        pass
    try:
        import pwd

        homes.append(Path(pwd.getpwuid(os.getuid()).pw_dir))
    except (ImportError, KeyError, OSError):
        pass
    return [Path(os.path.realpath(h)) for h in homes]


def protected_folder(directory: str | os.PathLike) -> str | None:
    """Why `directory` must never be replaced whole, or None: it is the root folder, the home folder (or a folder
    holding it), or the current folder (or a folder holding it); `.`, `..` and links are resolved first, so any
    spelling is caught. What a replacement would lose there is no output of ours, whatever it holds."""
    target = Path(os.path.realpath(directory))
    if target == Path(target.anchor):
        return "the root folder"
    for home in _homes():
        if target == home:
            return "the home folder"
        if target in home.parents:
            return f"a folder holding the home folder {str(home)!r}"
    try:
        cwd = Path(os.path.realpath(Path.cwd()))
    except OSError:  # the current folder was removed
        return None
    if target == cwd:
        return "the current folder"
    if target in cwd.parents:
        return f"a folder holding the current folder {str(cwd)!r}"
    return None


def refuse_protected(directory: str | os.PathLike, what: str = "") -> None:
    """Raise ValueError when `directory` is a `protected_folder` (`what` prefixes the message, e.g. "out: ")."""
    reason = protected_folder(directory)
    if reason is not None:
        raise ValueError(
            f"{what}{str(directory)!r} is {reason}; it is never replaced, choose a new folder for the output"
        )


def _plain_modes(folder: Path) -> None:
    """Give every file under `folder` the read/write bits a plain file gets (0666 less the umask); writers such as
    safetensors create theirs private (0600), which the finished folder must not keep."""
    plain = 0o666 & ~current_umask()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode & 0o7777
            if mode | plain != mode:
                os.chmod(path, mode | plain)


@contextmanager
def atomic_folder(directory: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside `directory` that replaces it when the block ends without error (removed otherwise).

    An existing `directory` is replaced whole with `replace` (callers decide whether it may be: `replaceable_folder`);
    without it, only an absent or empty one is, and a folder found full at the end (another process's, finished
    while this one wrote) is left as it is: FolderTaken. So is a folder that another writer put in place between
    this one's two renames. A file or a link there is refused. Temporaries of `directory` that killed writes left
    are removed first, and a folder a kill left only as `.NAME.old` is put back (`recover_folder`).

    The root folder, the home folder, the current folder and any folder holding one of them are never written
    (ValueError, `protected_folder`), whatever the caller checked: the last line of defence against a typo such as
    `export CKPT ~ --overwrite`."""
    target = Path(directory)
    refuse_protected(target)
    recover_folder(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{str(target)!r} exists and is not a folder; expected a folder to replace or a new name")
    if not replace and target.is_dir() and any(target.iterdir()):
        raise FileExistsError(f"{str(target)!r} is a folder that is not empty; expected a new name or an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the finished folder gets a plain folder's mode
    try:
        yield tmp
        _plain_modes(tmp)
        # checked now, not at the start: the folder may have appeared while this one was written
        if replace and target.is_dir() and not target.is_symlink():
            old = _old_name(target)
            shutil.rmtree(old, ignore_errors=True)
            # a kill between these two renames leaves only `old`: the next write (or check) puts it back
            try:
                os.replace(target, old)
            except OSError as exc:  # another writer moved it aside meanwhile (or put its own `old` back there)
                if exc.errno in (errno.ENOENT, *_TAKEN_ERRNOS):
                    raise _taken(target) from None
                raise
            _rename_new(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_new(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
