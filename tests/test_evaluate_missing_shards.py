"""`python -m pixelqa.evaluate eval.benchmark=NAME` without that benchmark's shards: one line naming the folder and
the build command (the suite's wording, `pixelqa.eval.suite.missing_split`), exit status 2, before the model loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures_video import build_revos

from pixelqa.data.shards import build_shards
from pixelqa.evaluate import main


class ModelLoaded(Exception):
    """Raised by the stand-in of `load_model`: the run got past every check."""


@pytest.fixture
def no_model(monkeypatch):
    """`load_model` raises ModelLoaded, so a test sees whether the run reached it (and no model is built)."""
    from pixelqa.eval import model_loading

    def load_model(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(model_loading, "load_model", load_model)


@pytest.fixture(scope="module")
def revos_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("revos")
    build_revos(root / "raw")
    build_shards("revos", root / "raw", root / "shards", split="valid", progress=False)
    return root / "shards"


def _evaluate(tmp_path: Path, *args: str) -> None:
    main(["recipe=stage3", *args, f"output_dir={tmp_path / 'out'}", "tracking.enabled=false"])


def _one_line_error(capsys, run) -> str:
    """The stderr of a run that must exit with status 2, checked to be one line."""
    with pytest.raises(SystemExit) as err:
        run()
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.mark.parametrize(("bench", "split"), [("refcoco", "val"), ("revos", "valid")])
def test_missing_benchmark_shards_are_one_line_naming_folder_and_build_command(
    bench, split, tmp_path, capsys, no_model
):
    shards = tmp_path / "shards"
    msg = _one_line_error(
        capsys, lambda: _evaluate(tmp_path, f"eval.benchmark={bench}", f"eval.split={split}", f"data.shards={shards}")
    )
    assert msg == (
        f"recipe error: eval.benchmark={bench} eval.split={split}: no shards at {shards / bench / split}; "
        f"build them with: python -m pixelqa.data build {bench} --root RAW/{bench} --out {shards} --split {split}"
    )


def test_an_empty_folder_or_an_unfinished_build_is_refused_too(revos_shards, tmp_path, capsys, no_model):
    shards = tmp_path / "shards"
    (shards / "refcoco" / "val").mkdir(parents=True)  # the folder exists, no shard in it
    msg = _one_line_error(capsys, lambda: _evaluate(tmp_path, "eval.benchmark=refcoco", f"data.shards={shards}"))
    assert f"no shards at {shards / 'refcoco' / 'val'}; build them with: python -m pixelqa.data build refcoco" in msg

    shutil.copytree(revos_shards / "revos", shards / "revos")
    (shards / "revos" / "valid" / "manifest.json").unlink()  # a build stopped before its manifest
    args = ("eval.benchmark=revos", "eval.split=valid", f"data.shards={shards}")
    msg = _one_line_error(capsys, lambda: _evaluate(tmp_path, *args))
    assert msg.startswith(
        f"recipe error: eval.benchmark=revos eval.split=valid: the shards in {shards / 'revos' / 'valid'} are an "
        "unfinished build (no manifest.json"
    )
    assert f"finish it with: python -m pixelqa.data build revos --root RAW --out {shards} --split valid" in msg


def test_finished_shards_and_synthetic_built_on_use_pass_the_check(revos_shards, tmp_path, no_model):
    with pytest.raises(ModelLoaded):  # the check passed and the run went on to load the model
        _evaluate(tmp_path, "eval.benchmark=revos", "eval.split=valid", f"data.shards={revos_shards}")
    with pytest.raises(ModelLoaded):  # synthetic shards are built on first use (data.build_if_missing=true)
        _evaluate(tmp_path, "eval.benchmark=synthetic", f"data.shards={tmp_path / 'shards'}")


def test_synthetic_without_build_if_missing_is_checked_like_any_benchmark(tmp_path, capsys, no_model):
    shards = tmp_path / "shards"
    args = ("eval.benchmark=synthetic", f"data.shards={shards}", "data.build_if_missing=false")
    msg = _one_line_error(capsys, lambda: _evaluate(tmp_path, *args))
    assert msg.startswith(f"recipe error: eval.benchmark=synthetic eval.split=val: no shards at {shards}/synthetic/val")
