"""Callbacks of a fit: checkpoints during training (with last.ckpt), learning-rate logging, mask overlays and the
headline metric to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from pixelqa import tracking

# MLflow lists metrics alphabetically; J&F is logged as `val/J_and_F` (the module's name, '&' made MLflow-safe) and
# again under this name: a leading digit sorts before every name that starts with a letter, in byte order,
# case-insensitively and in locale collation alike.
HEADLINE_METRICS = {"val/J&F": "0_J_and_F"}
MAX_CHECKPOINT_INTERVAL = 1000  # steps: bounds the work lost to a kill on long runs


PAPER_CHECKPOINT_INTERVAL = {1: 500, 2: 500, 3: 1000}  # optimizer steps, per stage, at scale=paper


def checkpoint_interval(recipe: Any) -> int:
    """Steps between checkpoints: the recipe's, else at scale=paper 500 (stages 1-2) / 1,000 (stage 3), else
    `default_checkpoint_interval`."""
    if recipe.trainer.checkpoint_every_n_steps:
        return int(recipe.trainer.checkpoint_every_n_steps)
    if recipe.presets.get("scale") == "paper":
        return PAPER_CHECKPOINT_INTERVAL[int(recipe.stage)]
    return default_checkpoint_interval(int(recipe.trainer.max_steps))


def default_checkpoint_interval(max_steps: int) -> int:
    """Steps between checkpoints when the recipe sets none: a fifth of the run, at least 10, at most 1000."""
    return max(10, min(MAX_CHECKPOINT_INTERVAL, max_steps // 5))


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint every N optimizer steps that also saves the final step when it is not a multiple of N.

    Lightning writes last.ckpt at the end only if no checkpoint was saved yet; a resume must start from the
    final weights, so the end of training saves whenever the last save was at an earlier step.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final step (top-k file and last.ckpt) unless it was just saved."""
        if self._last_global_step_saved != trainer.global_step and not trainer.interrupted:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


class HeadlineMetrics(Callback):
    """After each validation, log the headline metrics again under names that sort first (`HEADLINE_METRICS`)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Copy `val/J&F` to `0_J_and_F` in every logger, at the current step."""
        values = {
            new: float(trainer.callback_metrics[old])
            for old, new in HEADLINE_METRICS.items()
            if old in trainer.callback_metrics
        }
        if values and not trainer.sanity_checking:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)


class OverlayLogger(Callback):
    """After each validation: write ground-truth | prediction overlays of the first val samples and log them.

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
    """Checkpoints every `checkpoint_interval(recipe)` steps and at the end, the last `trainer.keep_checkpoints`
    kept, last.ckpt a link to the newest (one file per save); lr, headline metrics and overlays."""
    keep = int(recipe.trainer.keep_checkpoints)
    if keep < 1:
        raise ValueError(f"trainer.keep_checkpoints={keep}: expected >= 1 (the newest step checkpoint at least)")
    callbacks: list[Callback] = [
        StepCheckpoint(
            dirpath=str(ckpt_dir),
            filename="step{step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=checkpoint_interval(recipe),
            save_last="link",  # a relative symlink to the newest step file, not a second copy of it
            save_top_k=keep,  # monitor `step`: the newest `keep` step checkpoints survive
            monitor="step",
            mode="max",
            save_on_train_epoch_end=False,
        )
    ]
    if recipe.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))  # plain text: readable in logs too
    if logger is not None:
        callbacks += [LearningRateMonitor(logging_interval="step"), HeadlineMetrics()]
    if recipe.tracking.log_overlays and recipe.tracking.num_overlays > 0:
        callbacks.append(OverlayLogger(Path(recipe.output_dir) / "overlays", logger))
    return callbacks
