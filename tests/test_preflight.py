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


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("foo://x", "scheme 'foo' is not supported"),
        ("sqlite://mlruns.db", "a SQLite URI without a file path; expected sqlite:///PATH"),
        ("", "an empty URI"),
    ],
)
def test_a_tracking_uri_mlflow_cannot_open_fails_naming_key_value_and_what_is_accepted(tmp_path, uri, reason):
    with pytest.raises(RecipeError) as info:
        check_run(_recipe(tmp_path, f"tracking.tracking_uri='{uri}'"))
    message = str(info.value)
    assert message.startswith(f"tracking.tracking_uri={uri!r}: {reason}") and "\n" not in message
    assert "sqlite:///PATH" in message
    if not uri.startswith("sqlite"):  # the SQLite error says just how to write a SQLite URI
        assert "http(s)://" in message and "databricks" in message and "a folder path" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "uri", ["http://localhost:5000", "https://mlflow.example", "databricks", "file:///tmp/x", "mlruns", "/tmp/mlruns"]
)
def test_tracking_uris_mlflow_accepts_pass(tmp_path, uri):
    check_run(_recipe(tmp_path, f"tracking.tracking_uri={uri}"))  # no store is contacted or created


def test_every_cli_refuses_an_unusable_tracking_uri_before_any_work(tmp_path, capsys, monkeypatch):
    from pixelqa import evaluate, fit
    from pixelqa.grid import main as grid_main

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the tracking URI was checked")

    monkeypatch.setattr("pixelqa.model.unipixel.UniPixel.__init__", refuse)
    monkeypatch.setattr("pixelqa.tracking.prepare_store", refuse)
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ngrid:\n  seed: [0]\n")
    bad = ["tracking.tracking_uri=foo://x", f"data.shards={tmp_path / 'shards'}"]
    for entry, argv, prefix in (
        (fit.main, ["recipe=stage3", *bad], "recipe error"),
        (evaluate.main, ["recipe=stage3", *bad], "recipe error"),
        (evaluate.main, ["suite=paper", *bad], "recipe error"),
        (grid_main, [str(grid), *bad], "grid error"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            entry(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, (argv, err)
        assert err.startswith(f"{prefix}: tracking.tracking_uri='foo://x': scheme 'foo' is not supported"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]  # no store, shards, state or run folder


def test_a_random_sam_is_warned_about_only_where_nothing_gives_it_weights(tmp_path):
    from pixelqa.preflight import sam_init_warning

    base = tmp_path / "qwen"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    sam = tmp_path / "sam2.1_hiera_base_plus.pt"
    sam.write_bytes(b"")
    real = ["model=unipixel-3b", f"model.path={base}"]
    warning = sam_init_warning(_recipe(tmp_path, *real))
    assert warning is not None and warning.startswith("warning: model.mask_decoder.checkpoint is not set")
    assert "hiera_b+ SAM 2.1 mask decoder" in warning and "<|ref|> prompt encoder" in warning
    for given in (f"model.mask_decoder.checkpoint={sam}", f"init_from={sam}", "ckpt=last"):
        assert sam_init_warning(_recipe(tmp_path, *real, given)) is None, given
    assert sam_init_warning(_recipe(tmp_path)) is None  # the tiny demo model: random by design
