"""Shared pieces of the tests that run a tiny `pixelqa.fit` in-process and read what it logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient


def mlflow_fit_args(work: Path, name: str, *extra: str) -> list[str]:
    """A tiny stage-3 fit on synthetic shards in `work`, logged to an MLflow store in `work`, no validation."""
    return [
        "recipe=stage3",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "trainer.enable_progress_bar=false",
        "tracking.log_overlays=false",
        "eval.after_fit=false",
        f"output_dir={work / name}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"tracking.artifact_location={work / 'artifacts'}",
        *extra,
    ]


def checkpointing_fit_args(work: Path, name: str, *extra: str, train_samples: int = 16) -> list[str]:
    """A tiny stage-3 fit on synthetic shards in `work` that checkpoints every step: no MLflow, no validation."""
    return [
        "recipe=stage3",
        "tracking=none",
        f"data.shards={work / 'shards'}",
        f"data.synthetic_train={train_samples}",
        "data.synthetic_val=4",
        "data.batch_size=2",
        "trainer.enable_progress_bar=false",
        "tracking.log_overlays=false",
        "eval.after_fit=false",
        "trainer.checkpoint_every_n_steps=1",
        f"output_dir={work / name}",
        *extra,
    ]


def mlflow_history(work: Path, name: str) -> dict[str, dict[int, list[float]]]:
    """{metric: {step: [values logged at that step]}} of the MLflow run of `work/name`, read from the sqlite store."""
    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    run_id = (work / name / "checkpoints" / "mlflow_run_id.txt").read_text().strip()
    out: dict[str, dict[int, list[float]]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            out.setdefault(key, {}).setdefault(m.step, []).append(m.value)
    return out
