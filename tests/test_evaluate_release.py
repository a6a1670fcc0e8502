"""pixelqa.evaluate on a released folder: the settings the release fixes are said and recorded, as fit does."""

from __future__ import annotations

from pathlib import Path

import pytest

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny" / "checkpoint"
pytestmark = pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="shared released-format fixture not present")


def test_evaluate_says_which_settings_a_release_overrides_and_records_the_values_used(tmp_path, capsys):
    from mlflow import MlflowClient

    from pixelqa import evaluate

    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["recipe=stage3", "model=unipixel-3b", f"model.path={CHECKPOINT}", "model.dtype=float32"]
    args += [f"data.shards={tmp_path / 'shards'}", "data.synthetic_val=4", "eval.max_samples=2"]
    args += [f"tracking.tracking_uri={db}", f"tracking.artifact_location={tmp_path / 'art'}"]
    args += [f"output_dir={tmp_path / 'run'}", "tracking.log_overlays=false"]
    metrics = evaluate.run([*args, "model.hidden_tokens=4", "model.mask_decoder.mode=independent"])
    assert metrics["synthetic/samples_scored"] == 2
    out, err = capsys.readouterr()
    (line,) = [x for x in err.splitlines() if "is a released UniPixel, which fixes" in x]
    assert line.startswith(f"warning: model.path={CHECKPOINT} ") and "(recorded as used in MLflow)" in line
    assert "model.hidden_tokens: 4 -> 2" in line and "model.mask_decoder.mode: 'independent' -> 'propagate'" in line
    client = MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name("pixelqa").experiment_id])
    assert run.data.params["model.hidden_tokens"] == "2" and run.data.params["model.mask_decoder.mode"] == "propagate"
