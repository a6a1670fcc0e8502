"""Preflight: unwritable output folders, MLflow stores and unreadable validation shards fail before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixelqa.config import RecipeError, load_recipe, to_object
from pixelqa.preflight import check_run, check_writable


def _recipe(tmp_path, *extra):
    return to_object(
        load_recipe(
            [
                "recipe=stage3",
                f"output_dir={tmp_path / 'run'}",
                f"data.shards={tmp_path / 'shards'}",
                f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
                f"tracking.artifact_location={tmp_path / 'art'}",
                *extra,
            ]
        )
    )


def test_writable_places_pass_and_nothing_is_left_behind(tmp_path):
    check_run(_recipe(tmp_path))
    assert list(tmp_path.iterdir()) == []  # probes removed, nothing created


def test_output_under_a_file_fails_naming_the_key(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match=r"output_dir=.*file/out: .* is not a folder"):
        check_run(_recipe(tmp_path, f"output_dir={tmp_path / 'file' / 'out'}"))
    with pytest.raises(RecipeError, match="tracking.tracking_uri"):
        check_run(_recipe(tmp_path, f"tracking.tracking_uri=sqlite:///{tmp_path / 'file' / 'm.db'}"))


def _read_only_folder(tmp_path):
    """A folder the OS refuses new entries in: chmod 555 for a user; sysfs for root (root writes past chmod)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    probe = Path("/sys") / f"pixelqa-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    pytest.skip("no folder here refuses writes to root (sysfs accepted a new folder)")


def test_read_only_folder_fails(tmp_path):
    ro = _read_only_folder(tmp_path)
    try:
        with pytest.raises(RecipeError, match=rf"output_dir={ro}/out: cannot write in {ro} "):
            check_writable(ro / "out", "output_dir")
    finally:
        if ro.is_relative_to(tmp_path):
            ro.chmod(0o755)


def test_cli_fails_at_once_with_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    from pixelqa import fit

    monkeypatch.chdir(tmp_path)
    out = _read_only_folder(tmp_path) / "out"
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["recipe=stage3", f"output_dir={out}", f"data.shards={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and f"output_dir={out}: cannot write" in err, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "mlruns.db").exists()  # no work was done


def test_unreadable_or_strictly_damaged_validation_shards_fail(tmp_path):
    from pixelqa.train.datamodule import build_synthetic

    folder = build_synthetic(tmp_path / "shards", "val", 16)
    tar = sorted(folder.glob("*.tar"))[1]
    tar.write_bytes(tar.read_bytes()[:3000])  # truncated
    check_run(_recipe(tmp_path))  # damage is skipped and counted by default
    with pytest.raises(RecipeError, match=rf"data.strict=true and data.val_sources\[0\] is damaged: .*{tar.name}"):
        check_run(_recipe(tmp_path, "data.strict=true"))
    tar.chmod(0o000)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(RecipeError, match="cannot read"):
            check_run(_recipe(tmp_path))
