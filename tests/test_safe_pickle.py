"""The restricted unpickler of dataset pickles: plain data loads, anything that could run code is refused."""

from __future__ import annotations

import collections
import os
import pickle

import pytest

from pixelqa.data.sources._image_files import cached_pickle
from pixelqa.data.sources._safe_pickle import UnsafePickleError, load_plain_pickle, loads_plain_pickle


class _RunsCode:
    """Pickles as a call to os.system: loading it with pickle.load would run a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_data_round_trips_in_every_protocol():
    data = {
        "0": [{"size": [2, 3], "counts": b"abc"}, None],
        "refs": [{"ref_id": 1, "sentences": [{"sent": "a man", "raw": "A man"}], "box": (1.5, 2.0)}],
        "misc": [{1, 2}, frozenset({3}), bytearray(b"x"), 1 + 2j, True, 2**70, -0.5],
        "ordered": collections.OrderedDict(a=1),
    }
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert loads_plain_pickle(pickle.dumps(data, protocol=protocol)) == data, protocol


def test_python2_refer_pickle_loads():
    # What the refer toolkit's Python-2 pickles look like: protocol 2, str as SHORT_BINSTRING (8-bit strings).
    py2 = b"\x80\x02]q\x00}q\x01(U\x06ref_idq\x02K\x07U\x04sentq\x03U\x05a manq\x04ua."
    assert loads_plain_pickle(py2) == [{"ref_id": 7, "sent": "a man"}]


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "mask_dict.pkl"
    path.write_bytes(pickle.dumps({"0": [_RunsCode(str(marker))]}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"mask_dict\.pkl.*posix\.system|mask_dict\.pkl.*os\.system"):
        load_plain_pickle(path)
    with pytest.raises(ValueError, match="expected only builtin containers"):
        cached_pickle(path)
    assert not marker.exists()
    # The same bytes do run code with the standard unpickler: the test would notice an unrestricted loader.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1'\ntR.",  # eval through a builtins global
        b"c__builtin__\ngetattr\n(c__builtin__\nobject\nS'x'\ntR.",  # Python-2 names map to builtins, still refused
        b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",  # _codecs.encode admitted for latin1 only
        b"(cos\nsystem\nS'true'\no.",  # INST/OBJ opcodes go through find_class too
    ],
)
def test_other_globals_are_refused(payload):
    with pytest.raises(UnsafePickleError):
        loads_plain_pickle(payload, "crafted.p")


def test_damaged_pickle_names_the_file(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: not a readable pickle"):
        load_plain_pickle(path)
    with pytest.raises(FileNotFoundError, match="missing.p"):
        load_plain_pickle(tmp_path / "missing.p")


@pytest.mark.parametrize("kind", [b"bytes", b"bytearray"])
def test_an_allocation_by_an_admitted_builtin_is_an_unreadable_pickle_not_a_memory_error(kind):
    # bytes(2**40) / bytearray(2**40) by REDUCE: an admitted global called with an integer would allocate 1 TiB
    payload = b"\x80\x02c__builtin__\n" + kind + b"\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R."
    with pytest.raises(ValueError, match=r"mask_dict\.pkl: not a readable pickle \(TypeError: .*integer would alloc"):
        loads_plain_pickle(payload, "mask_dict.pkl")
    bad_encoding = b"\x80\x02c__builtin__\n" + kind + b"\nX\x01\x00\x00\x00aX\x03\x00\x00\x00bad\x86R."
    with pytest.raises(ValueError, match=r"not a readable pickle \(LookupError"):
        loads_plain_pickle(bad_encoding, "mask_dict.pkl")
    from_ints = b"\x80\x02c__builtin__\n" + kind + b"\n]q\x00(K\x01K\x02e\x85R."  # what data can still build
    assert loads_plain_pickle(from_ints) == b"\x01\x02"
