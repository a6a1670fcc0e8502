"""A restricted unpickler for dataset pickles (the refer toolkit's ``refs(unc).p``, UniPixel's ``mask_dict.pkl``).

A pickle can name any importable callable and call it while loading, so a crafted dataset file could run code.
The releases hold only builtin containers, strings, bytes and numbers, which the pickle opcodes build without
importing anything; the few globals such plain data may still reference are admitted by name, and every
other global is refused with an error naming the file and the global. This module registers no source.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from pathlib import Path
from typing import Any

_LATIN1 = {"latin1", "latin-1", "iso8859-1", "iso-8859-1"}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes into protocol-2 pickles, limited to that one use."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
        raise UnsafePickleError(
            f"_codecs.encode: got ({type(text).__name__}, {encoding!r}), expected (str, 'latin1') as pickled bytes"
        )
    return codecs.encode(text, "latin1", errors)


def _from_data(kind: type) -> Any:
    """`bytes` / `bytearray` as pickles call them, from data only: a str (with its encoding), bytes or a list of
    ints. An integer argument, which allocates that many zero bytes (`bytes(2**40)`), is refused."""

    def build(source: Any = b"", *args: Any) -> Any:
        if not isinstance(source, (str, bytes, bytearray, list, tuple)):
            raise TypeError(
                f"{kind.__name__}: got an argument of type {type(source).__name__}, expected str, bytes or a list "
                "of ints (an integer would allocate that many bytes)"
            )
        return kind(source, *args)

    build.__name__ = build.__qualname__ = kind.__name__
    return build


# (module, name) -> what a plain-data pickle may reference; Python-2 names arrive mapped by fix_imports
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): _from_data(bytearray),
    ("builtins", "bytes"): _from_data(bytes),
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


_PY2_MODULES = {"__builtin__": "builtins"}


class UnsafePickleError(ValueError):
    """A pickle that references something other than plain data (which could run code while loading)."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler whose find_class admits only ALLOWED_GLOBALS."""

    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python-2 str pickles (the refer release) load too
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global, or UnsafePickleError naming it."""
        module = _PY2_MODULES.get(module, module)  # what fix_imports would do; the base find_class is bypassed
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        raise UnsafePickleError(
            f"{self._where}: the pickle references {module}.{name}, expected only builtin containers, strings, "
            "bytes and numbers (a dataset pickle that names other globals could run code; it was not loaded)"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are refused: plain data never uses them."""
        raise UnsafePickleError(f"{self._where}: the pickle uses a persistent id {pid!r:.40}, expected plain data")


def load_plain_pickle(path: str | Path) -> Any:
    """Load a dataset pickle admitting only plain data; FileNotFoundError / ValueError name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotation file not found: {p}")
    return loads_plain_pickle(p.read_bytes(), str(p))


def loads_plain_pickle(data: bytes, where: str = "pickle") -> Any:
    """`load_plain_pickle` of bytes; `where` names the origin in errors."""
    try:
        return _PlainDataUnpickler(io.BytesIO(data), where).load()
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        IndexError,
        TypeError,
        ValueError,  # an admitted call's own (a bad encoding name is a LookupError, a bad code point a ValueError)
        LookupError,
        OverflowError,
        MemoryError,  # whatever still asks for more memory than there is
    ) as e:
        raise ValueError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from e
