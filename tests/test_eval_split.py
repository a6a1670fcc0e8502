"""`eval.split` names a split the benchmark has: a wrong one is a recipe error before any work (exit 2, one line)."""

from __future__ import annotations

import pytest

from pixelqa import evaluate, fit


@pytest.fixture(autouse=True)
def _no_model(monkeypatch):
    """Building the network would be work: a test passes only if the error comes first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the recipe error was found")

    monkeypatch.setattr("pixelqa.model.unipixel.UniPixel.__init__", refuse)


def _args(tmp_path, *extra):
    return [
        "recipe=stage3",
        f"output_dir={tmp_path / 'run'}",
        f"data.shards={tmp_path / 'shards'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"tracking.artifact_location={tmp_path / 'art'}",
        *extra,
    ]


def _user_error(capsys, entry, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "bench, split, valid",
    [
        ("synthetic", "test", "train, val"),
        ("refcoco", "valid", "train, val, testA, testB"),
        ("mevis", "val", "train, valid_u, valid"),
    ],
)
def test_evaluate_refuses_a_split_the_benchmark_lacks(tmp_path, capsys, bench, split, valid):
    err = _user_error(capsys, evaluate.main, _args(tmp_path, f"eval.benchmark={bench}", f"eval.split={split}"))
    assert f"recipe error: eval.split='{split}' is not valid for eval.benchmark={bench}; valid choices: {valid}" in err
    assert not (tmp_path / "shards").exists() and not (tmp_path / "mlruns.db").exists()  # nothing built or logged


def test_fit_refuses_an_eval_split_its_generation_pass_would_read(tmp_path, capsys):
    # eval.scoring=both (the demo default) reads eval.split after training: the error must come before it
    err = _user_error(capsys, fit.main, _args(tmp_path, "eval.scoring=both", "eval.split=test"))
    assert "eval.split='test' is not valid for eval.benchmark=synthetic; valid choices: train, val" in err
    assert not (tmp_path / "run").exists()


def test_fit_ignores_eval_split_when_nothing_reads_it(tmp_path):
    from pixelqa.config import load_recipe, to_object

    # teacher-forced validation reads data.val_sources' splits; eval.split is not used
    recipe = to_object(load_recipe(_args(tmp_path, "eval.scoring=teacher_forced", "eval.split=test")))
    fit.check_eval_split(recipe)
