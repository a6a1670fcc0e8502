"""predict's --out is never the home or current folder (or one holding them), even when that folder is empty: an
empty folder passes the "nothing but earlier outputs" check, and the output would then replace it whole."""

from __future__ import annotations

import pytest

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.outputs import check_out


@pytest.mark.parametrize("spelling", [".", "HOME", "PARENT"])
def test_empty_home_current_or_parent_folder_is_refused(tmp_path, monkeypatch, spelling):
    home, work = tmp_path / "home", tmp_path / "home" / "work"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    target = {".": ".", "HOME": str(home), "PARENT": ".."}[spelling]
    if spelling == "HOME":
        monkeypatch.chdir(tmp_path)  # home alone, not as the current folder's parent
        (home / "work").rmdir()  # empty, so only the protection refuses it
    with pytest.raises(PredictInputError, match=r"--out: .* is (the|a folder holding the) (home|current) folder"):
        check_out(target)


def test_a_new_folder_under_the_current_one_is_taken(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(check_out("out")) == "out"
