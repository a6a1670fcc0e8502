"""Where MLflow's artifacts go: `tracking.artifact_location` left at its default lies beside a local store (a SQLite
file's folder, the folder holding a file store), not in the working directory; fit's final report names it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pixelqa import tracking
from pixelqa.config import TrackingConfig, load_recipe, to_object


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def test_default_artifacts_follow_a_local_store(tmp_path, monkeypatch):
    cwd, away = tmp_path / "cwd", tmp_path / "sp ace ü" / "store"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # the default store: both in the working directory, as before
    assert tracking.resolve_uris(TrackingConfig()) == (
        f"sqlite:///{cwd.resolve()}/mlruns.db",
        _uri(cwd / "mlartifacts"),
    )
    # a SQLite store elsewhere, absolute or relative: its folder
    for given, folder in ((f"sqlite:///{away}/ml runs.db", away), ("sqlite:///sub/m.db", cwd / "sub")):
        _, art = tracking.resolve_uris(TrackingConfig(tracking_uri=given))
        assert art == _uri(folder / "mlartifacts"), given
    # a file store (a folder path or file:///PATH): beside that folder
    for given in (str(away / "mlruns"), (away / "mlruns").as_uri()):
        assert tracking.resolve_uris(TrackingConfig(tracking_uri=given))[1] == _uri(away / "mlartifacts"), given
    assert tracking.resolve_uris(TrackingConfig(tracking_uri="runs/mlruns"))[1] == _uri(cwd / "runs" / "mlartifacts")
    # a server: no local folder to follow, the working directory as before
    assert tracking.resolve_uris(TrackingConfig(tracking_uri="http://h:5000"))[1] == _uri(cwd / "mlartifacts")
    # a location the user gives is kept as given (a relative one anchored at the working directory)
    moved = TrackingConfig(tracking_uri=f"sqlite:///{away}/m.db", artifact_location="art")
    assert tracking.resolve_uris(moved)[1] == _uri(cwd / "art")
    moved.artifact_location = str(tmp_path / "mine")
    assert tracking.resolve_uris(moved)[1] == _uri(tmp_path / "mine")
    assert tracking.store_folder("postgresql://u@h/db") is None and tracking.store_folder("sqlite:///:memory:") is None


def test_the_default_named_here_is_the_config_default():
    assert TrackingConfig().artifact_location == tracking.DEFAULT_ARTIFACTS
    assert TrackingConfig().tracking_uri == tracking.DEFAULT_TRACKING_URI


def test_a_run_logging_to_a_moved_store_writes_nothing_in_the_working_directory(tmp_path, monkeypatch, capsys):
    cwd, away = tmp_path / "cwd", tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = TrackingConfig(experiment="moved", tracking_uri=f"sqlite:///{away}/ml runs.db")
    logger = tracking.build_logger(cfg, run_name="r")
    tracking.log_table(logger, [{"a": 1}], "table", tmp_path / "tables")
    logger.finalize("success")
    assert list(cwd.iterdir()) == []  # no ./mlartifacts
    held = sorted(p.relative_to(away).parts[-3:] for p in (away / "mlartifacts").rglob("*.csv"))
    assert held == [("artifacts", "tables", "table.csv")]
    # the same store opened with another artifact location: the experiment keeps its own, and says so once
    other = TrackingConfig(experiment="moved", tracking_uri=cfg.tracking_uri, artifact_location=str(tmp_path / "x"))
    capsys.readouterr()
    for _ in range(2):
        tracking.build_logger(other, run_name="again").finalize("success")
    out = capsys.readouterr().out
    assert out.count("note: experiment 'moved'") == 1 and _uri(away / "mlartifacts") in out


def test_fit_final_report_names_the_artifacts_beside_the_store(tmp_path, monkeypatch):
    from pixelqa.fit import where_report

    cwd, away = tmp_path / "cwd", tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = ["recipe=stage3", f"tracking.tracking_uri=sqlite:///{away}/m.db", f"output_dir={tmp_path / 'run'}"]
    recipe = to_object(load_recipe(args))
    report = where_report(recipe, args, SimpleNamespace(run_id="r1", experiment_id="1"), [])
    line = next(x for x in report.splitlines() if "artifacts " in x)
    assert f"artifacts {_uri(away / 'mlartifacts')};" in line, report


def test_lightning_classes_are_module_attributes_built_on_first_use():
    assert (
        tracking.PixelQALogger.__name__ == "PixelQALogger" and tracking.PixelQALogger.__module__ == "pixelqa.tracking"
    )
    assert tracking.ParamsAtSetup.__qualname__ == "ParamsAtSetup"
    with pytest.raises(AttributeError):
        tracking.NoSuchThing  # noqa: B018
