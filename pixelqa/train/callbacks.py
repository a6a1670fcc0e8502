"""Callbacks of a fit: checkpoints (with last.ckpt), learning-rate logging, mask overlays to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from pixelqa import tracking


class OverlayLogger(Callback):
    """After each validation: write prediction | ground-truth overlays of the first val samples and log them.

    Images become PNG, videos GIF, under `<output_dir>/overlays/step<N>/`; with a logger they go to MLflow
    artifacts `overlays/step<N>/`.
    """

    def __init__(self, out_dir: str | Path, logger: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.logger = logger
        self.written: list[Path] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save and log the overlays the module collected during validation (rank 0 only)."""
        from pixelqa.viz import save_overlay

        items = getattr(pl_module, "overlays", None)
        if not trainer.is_global_zero or not items:
            return
        folder = self.out_dir / f"step{trainer.global_step:06d}"
        paths = [
            save_overlay(it["frames"], it["pred"], it["target"], folder / f"{i:02d}_{it['key']}")
            for i, it in enumerate(items)
        ]
        self.written.extend(paths)
        if self.logger is not None:
            tracking.log_artifact(self.logger, folder, f"overlays/{folder.name}")


def build_callbacks(recipe: Any, ckpt_dir: Path, logger: Any) -> list[Callback]:
    """Checkpointing every `trainer.checkpoint_every_n_steps` (else at the end) plus last.ckpt; lr and overlays."""
    every = recipe.trainer.checkpoint_every_n_steps or recipe.trainer.max_steps
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="step{step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=int(every),
            save_last=True,
            save_top_k=1,  # no monitor: keeps the most recent step checkpoint beside last.ckpt
            save_on_train_epoch_end=False,
        )
    ]
    if recipe.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))  # plain text: readable in logs too
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if recipe.tracking.log_overlays and recipe.tracking.num_overlays > 0:
        callbacks.append(OverlayLogger(Path(recipe.output_dir) / "overlays", logger))
    return callbacks
