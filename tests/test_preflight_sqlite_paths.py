"""SQLite paths SQLite cannot open (over its 512 bytes with the journal, or a file name whose `-journal` / `.lock`
sibling exceeds the file system's 255) fail in the preflight with one line, not after minutes of MLflow retries."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from pixelqa.config import RecipeError, TrackingConfig
from pixelqa.preflight import SQLITE_MAX_PATH, check_tracking, sqlite_path_problem


def _db_of_length(root: Path, total: int, name_len: int = 40) -> Path:
    """A database path of `total` bytes under `root` (folders of <= 200 bytes each, created), file name `name_len`."""
    folder = root.resolve()
    while len(str(folder)) + 1 + name_len < total:
        step = min(200, total - len(str(folder)) - 1 - name_len - 1)
        folder = folder / ("d" * max(step, 1))
    folder.mkdir(parents=True, exist_ok=True)
    name = "x" * (total - len(str(folder)) - 1 - 3) + ".db"
    path = folder / name
    assert len(os.fsencode(str(path))) == total
    return path


def _sqlite_opens(path: Path) -> bool:
    """Whether SQLite itself creates and writes a database at `path` (a journal is written beside it)."""
    try:
        con = sqlite3.connect(path)
        con.execute("create table t (a)")
        con.execute("insert into t values (1)")
        con.commit()
        con.close()
        return True
    except sqlite3.OperationalError:
        return False


def test_the_limits_checked_are_sqlites_own(tmp_path):
    longest = SQLITE_MAX_PATH - len("-journal")
    ok, too_long = _db_of_length(tmp_path / "a", longest), _db_of_length(tmp_path / "b", longest + 1)
    assert sqlite_path_problem(ok) is None and _sqlite_opens(ok)
    assert sqlite_path_problem(too_long) is not None and not _sqlite_opens(too_long)
    name_ok, name_long = tmp_path / ("n" * 244 + ".db"), tmp_path / ("n" * 245 + ".db")  # 247 and 248 bytes
    assert sqlite_path_problem(name_ok) is None and _sqlite_opens(name_ok)
    assert sqlite_path_problem(name_long) is not None and not _sqlite_opens(name_long)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("long path", r"the path is 711 bytes; SQLite opens paths of at most 512 bytes"),
        ("long name", r"its file name is 250 bytes; the -journal file SQLite writes beside it must fit in the file"),
        ("unicode name", r"its file name is 250 bytes"),  # bytes, not characters
        ("long folder", r"the name 'f+\.\.\.f+' is 300 bytes, over the file system's 255"),
    ],
)
def test_sqlite_paths_sqlite_cannot_open_fail_at_once_in_one_line(tmp_path, case, expected):
    if case == "long path":
        db = _db_of_length(tmp_path, 711)
    elif case == "long name":
        db = tmp_path / ("d" * 247 + ".db")
    elif case == "unicode name":
        db = tmp_path / ("ü" * 123 + "x.db")  # 127 characters, 250 bytes
    else:
        db = tmp_path / ("f" * 300) / "m.db"
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{db}", artifact_location=str(tmp_path / "art"))
    start = time.monotonic()
    with pytest.raises(RecipeError, match=expected) as err:
        check_tracking(cfg)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and message.startswith("tracking.tracking_uri=sqlite:///")
    assert "SQLite cannot open" in message and len(message) < 600  # hundreds of bytes of path cut in the middle
    assert not any(tmp_path.rglob("*.db*"))  # neither the database nor its lock was created


def test_a_folder_name_over_the_limit_fails_in_one_line_not_at_mkdir(tmp_path):
    from pixelqa.preflight import check_writable

    with pytest.raises(RecipeError, match=r"^output_dir=.*: cannot create it \(the name 'o+\.\.\.o+' is 256 bytes"):
        check_writable(tmp_path / "run" / ("o" * 256) / "x", "output_dir")
    check_writable(tmp_path / "run" / ("o" * 255) / "x", "output_dir")  # at the limit: fine


def test_fit_cli_refuses_a_long_sqlite_path_with_status_2(tmp_path, capsys, monkeypatch):
    from pixelqa import fit

    monkeypatch.chdir(tmp_path)
    db = _db_of_length(tmp_path / "store", 600)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        fit.main(
            [
                "recipe=stage3",
                f"output_dir={tmp_path / 'run'}",
                f"data.shards={tmp_path / 's'}",
                f"tracking.tracking_uri=sqlite:///{db}",
                "trainer.max_steps=1",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "SQLite cannot open" in err and "the path is 600 bytes" in err
    assert time.monotonic() - start < 30  # not MLflow's minutes of retries
    assert not (tmp_path / "s").exists()  # no work was done
