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
import stat
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


class FolderNotReplaceable(PermissionError):
    """A folder this process may not replace whole (rename aside, then remove): the message says why; nothing was
    replaced. A PermissionError (EACCES), so that callers mapping disk errors (`disk_error`) keep doing so."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)

    def __str__(self) -> str:
        return str(self.strerror)


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


def _removal_blocker(folder: Path) -> str | None:
    """Why this process could not remove the folder `folder` and everything in it, or None: a folder inside that it
    may not list and change (write-protected, another user's), or a sticky folder holding another user's entries."""
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    failed: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=lambda exc: failed.append(f"{exc.filename!r} cannot be read")):
        if failed:
            break
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            return f"{root!r} is write-protected or another user's (its entries cannot be removed)"
        st = os.lstat(root)
        if st.st_mode & stat.S_ISVTX and euid not in (0, None, st.st_uid):
            for name in dirs + files:  # in a sticky folder only an entry's owner (or the folder's) may remove it
                if os.lstat(os.path.join(root, name)).st_uid != euid:
                    return f"{os.path.join(root, name)!r} is another user's, in a sticky folder"
    return failed[0] if failed else None


def replace_blocker(directory: str | os.PathLike) -> str | None:
    """Why this process could not replace the existing folder `directory` whole, or None (also for a new name or
    a file: those are other checks). Replacing renames it aside to `.NAME.old` and removes that after the new folder
    is in: it needs a writable parent, the right to rename it there (a sticky parent, such as /tmp, lets only the
    owner) and the right to remove everything in it; a `.NAME.old` left by an earlier replacement must go too.
    Checked before slow work, so that a run does not fail (or leave the old folder behind) at its end."""
    target = Path(directory)
    if target.is_symlink() or not target.is_dir():
        return None
    parent = target.absolute().parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its folder {str(parent)!r} is not writable"
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    st_parent, st = os.stat(parent), os.lstat(target)
    if st_parent.st_mode & stat.S_ISVTX and euid not in (0, None, st_parent.st_uid, st.st_uid):
        return (
            f"it belongs to another user (uid {st.st_uid}) and its folder {str(parent)!r} is sticky (only the owner "
            "may rename it)"
        )
    reason = _removal_blocker(target)
    if reason is not None:
        return reason
    old = _old_name(target)
    if old.is_symlink() or old.exists():
        reason = _removal_blocker(old) if old.is_dir() and not old.is_symlink() else None
        if reason is not None:
            return (
                f"{str(old)!r} (the folder an earlier write replaced, left beside it) cannot be removed: {reason}; "
                "remove it by hand"
            )
    return None


def _clear_aside(old: Path, target: Path) -> None:
    """Remove `.NAME.old` left by an earlier replacement whose new folder is in place (its removal failed); one that
    stays is a FolderNotReplaceable naming it, never taken for another writer's work."""
    if not (old.exists() or old.is_symlink()):
        return
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
    if old.exists() or old.is_symlink():
        reason = replace_blocker(target) or (
            f"{str(old)!r} (the folder an earlier write replaced, left beside it) cannot be removed; remove it by hand"
        )
        raise FolderNotReplaceable(f"{str(target)!r} cannot be replaced: {reason}")


def _remove_replaced(old: Path) -> None:
    """Remove the folder a replacement renamed aside; what cannot be removed is said on stderr (the new folder is
    in place, so the write stands), never left silently."""
    errors: list[str] = []
    shutil.rmtree(old, onerror=lambda _fn, path, exc: errors.append(f"{path}: {exc[1]}"))
    if old.exists():
        print(
            f"warning: {old} (the folder this write replaced) could not be removed ({errors[0] if errors else '?'}); "
            "remove it by hand",
            file=sys.stderr,
        )


def _check_replaceable(target: Path) -> None:
    """Raise FolderNotReplaceable when `replace_blocker` finds a reason."""
    reason = replace_blocker(target)
    if reason is not None:
        raise FolderNotReplaceable(f"{str(target)!r} cannot be replaced: {reason}")


def recover_folder(directory: str | os.PathLike) -> Path | None:
    """Put back a folder that a kill between `atomic_folder`'s two renames left only as `.NAME.old` (said on
    stderr); returns it, or None when there was nothing to recover."""
    target = Path(directory)
    if not recoverable(target):
        return None
    old = _old_name(target)
    os.replace(old, target)
    print(f"note: restored {target} from {old}, left by a write killed while replacing it", file=sys.stderr)
    return target


def recoverable(directory: str | os.PathLike) -> bool:
    """Whether `recover_folder` would put `directory` back (absent, its `.NAME.old` there)."""
    target = Path(directory)
    old = _old_name(target)
    return not (target.exists() or target.is_symlink()) and old.is_dir() and not old.is_symlink()


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
    are removed first, and a folder a kill left only as `.NAME.old` is put back (`recover_folder`). A folder this
    process could not rename aside and remove (`replace_blocker`: write-protected, another user's, a `.NAME.old` an
    earlier replacement could not remove) is FolderNotReplaceable, raised before the block runs and nothing touched.

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
    if replace and target.is_dir():
        _check_replaceable(target)  # before the caller's work: a folder that cannot go would fail only at the end
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
            _clear_aside(old, target)
            _check_replaceable(target)
            # a kill between these two renames leaves only `old`: the next write (or check) puts it back
            try:
                os.replace(target, old)
            except OSError as exc:  # another writer moved it aside meanwhile (or put its own `old` back there)
                if exc.errno in (errno.ENOENT, *_TAKEN_ERRNOS):
                    raise _taken(target) from None
                raise
            _rename_new(tmp, target)
            _remove_replaced(old)
        else:
            _rename_new(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_temp(directory: str | os.PathLike) -> Path:
    """A new, empty temporary folder beside `directory` with a plain folder's mode, named as `atomic_folder` names
    its own (`remove_stale_temps` removes it once its writer has exited); `install_folder` renames it into place."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the finished folder gets a plain folder's mode
    return tmp


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then each folder's entries, to the disk."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                _fsync(path)
        _fsync(Path(root))


def install_folder(tmp: str | os.PathLike, directory: str | os.PathLike, durable: bool = False) -> Path:
    """Rename the finished folder `tmp` (a `folder_temp` of `directory`) onto `directory`. An older folder of that
    name is replaced: renamed aside to `.NAME.old`, `tmp` renamed in, the old one removed; a kill between the two
    renames leaves only `.NAME.old`, which `recover_folder` puts back. A file or a link at `directory` is refused.
    `durable` syncs the new folder's files before the renames and the parent folder after them. When a rename
    fails, `directory` is as it was and `tmp` is left to its writer."""
    tmp, target = Path(tmp), Path(directory)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{str(target)!r} exists and is not a folder; expected a folder to replace or a new name")
    _plain_modes(tmp)
    if durable:
        _fsync_tree(tmp)
    old = _old_name(target)
    if target.is_dir():
        _clear_aside(old, target)  # a leftover of an earlier replacement that finished its renames
        _check_replaceable(target)
        os.replace(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.replace(old, target)  # the older folder back under its name
            raise
    else:
        # the only copy of an earlier folder of this name may sit at `old` (a kill between the renames): this newer
        # folder supersedes it, so it goes once the new one is in place
        _rename_new(tmp, target)
    if old.is_dir() and not old.is_symlink():
        _remove_replaced(old)
    if durable:
        _fsync(target.parent)
    return target


def remove_folder(directory: str | os.PathLike) -> None:
    """Remove the folder `directory` by renaming it to a temporary name first: a kill during the removal leaves a
    temporary (`remove_stale_temps` removes it), never part of the folder under its own name."""
    target = Path(directory)
    aside = target.with_name(temp_prefix(target) + uuid.uuid4().hex[:8])
    os.rename(target, aside)
    shutil.rmtree(aside, ignore_errors=True)
