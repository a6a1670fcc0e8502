"""Loading checkpoint files without running code from them (predict, the demo, `init_from`, evaluate, export).

`torch.load` unpickles: a crafted file can name any importable callable and have it called while loading. Our
files need no such thing: a Lightning checkpoint of `pixelqa.fit` holds tensors, numbers, strings and plain
containers (its hyper-parameters are saved as plain dicts), at most a path inside them. So every file is read
with `weights_only=True` and ALLOWED_GLOBALS; a file that needs anything else is refused with a message naming
those types, unless the caller trusts it (`--trust-checkpoint` / `trust_checkpoint=true`: plain `torch.load`).

    safe_torch_load(path, trust=False, what="init_from", hint="set trust_checkpoint=true")
"""

from __future__ import annotations

import pathlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

# Types besides tensors and plain containers that a PixelQA checkpoint may hold (paths in hyper-parameters).
ALLOWED_GLOBALS = (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath)
# pickle's message when a module has no attribute of the name a file stores (a class of the saving script's __main__)
_MISSING_ATTRIBUTE = re.compile(r"Can't get attribute '(?P<name>[^']+)' on <module '(?P<module>[^']+)'")


class CheckpointError(ValueError):
    """A checkpoint that is refused (it would need unsafe unpickling) or cannot be read; the message says which."""


def unsafe_globals(path: str | Path) -> list[str]:
    """The globals a checkpoint names beyond ALLOWED_GLOBALS (best effort: [] when they cannot be listed)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001  (listing is best effort; a refusal stands either way)
        return []
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in ALLOWED_GLOBALS}
    return [u for u in found if u not in allowed]


def safe_torch_load(
    path: str | Path, trust: bool = False, what: str = "checkpoint", hint: str = "Pass --trust-checkpoint"
) -> Any:
    """torch.load on CPU without arbitrary unpickling (weights_only + ALLOWED_GLOBALS); `trust` lifts the limit.

    `what` names the argument in the messages (`--model`, `init_from`), `hint` says how to trust a file.
    """
    if trust:
        return _trusted_load(path, what)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)), warnings.catch_warnings():
            # a plain pickle (not torch.save) is refused below; torch's note on its protocol only adds noise
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = unsafe_globals(path)
        if not names and "unsupported global" not in str(exc).lower() and not zipfile.is_zipfile(path):
            # neither a torch.save file nor a pickle naming globals: damaged or not a checkpoint, not a refusal
            raise CheckpointError(
                f"{what}: {str(path)!r} cannot be read as a checkpoint (not a torch.save file)"
            ) from None
        names = names or ["(objects outside tensors and plain data)"]
        raise CheckpointError(
            f"{what}: {str(path)!r} needs unpickling of {', '.join(names[:5])}, which could run code; refused. "
            f"{hint} only for a file you trust"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{what}: {str(path)!r} cannot be read as a checkpoint: {exc}") from None
    except (KeyError, ValueError, IndexError, TypeError, AttributeError, MemoryError) as exc:
        # torch's restricted unpickler reading bytes that are no pickle at all (a text file: KeyError 101)
        raise CheckpointError(
            f"{what}: {str(path)!r} cannot be read as a checkpoint (not a torch.save file: "
            f"{type(exc).__name__} while reading)"
        ) from None


def _trusted_load(path: str | Path, what: str) -> Any:
    """Plain `torch.load` (full unpickling) of a file the user trusts; a file that cannot be read is a
    CheckpointError naming `what`, as in the safe branch (trust lifts the refusal, not the need for a readable file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:  # the file names a class of a module that is not installed here
        raise CheckpointError(
            f"{what}: {str(path)!r} needs module {exc.name}, which cannot be imported here; expected a checkpoint "
            "whose objects are importable (install the package that saved it)"
        ) from None
    except AttributeError as exc:  # a class missing from its module: most often one of the saving script's __main__
        m = _MISSING_ATTRIBUTE.search(str(exc))
        if m is None:
            needed = f"an object that is missing ({exc})"
        else:
            # the file's own spelling of the class (`__main__.Custom`): the message names the module as it is here
            # (under `python -m x`, `x.__main__`)
            stored = [g for g in unsafe_globals(path) if g.rsplit(".", 1)[-1] == m["name"]]
            needed = f"class {stored[0] if stored else m['module'] + '.' + m['name']}"
        raise CheckpointError(
            f"{what}: {str(path)!r} needs {needed}, which cannot be imported here; expected a checkpoint whose "
            "objects are importable"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{what}: {str(path)!r} cannot be read as a checkpoint: {exc}") from None
    except (pickle.UnpicklingError, KeyError, ValueError, IndexError, TypeError, ImportError, MemoryError) as exc:
        # a zip that is no torch.save file (KeyError 'storages'), bytes that are no pickle, a class that will not
        # build from its stored state
        raise CheckpointError(
            f"{what}: {str(path)!r} cannot be read as a checkpoint (not a torch.save file: "
            f"{type(exc).__name__} while reading)"
        ) from None
