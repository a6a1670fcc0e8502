"""Callbacks of a fit: checkpoints during training (with last.ckpt), learning-rate logging, mask overlays and the
headline metric to MLflow."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from pixelqa import tracking
from pixelqa.files import atomic_file, atomic_symlink
from pixelqa.quiet import progress_enabled
from pixelqa.train.checkpoint_io import settle

# MLflow lists metrics alphabetically; J&F is logged as `val/J_and_F` (the module's name, '&' made MLflow-safe) and
# again under this name: a leading digit sorts before every name that starts with a letter, in byte order,
# case-insensitively and in locale collation alike. Both are the teacher-forced J&F (free generation: val/gen/J&F);
# the name stays as dashboards know it, and fit's printout and the grid's table say which scoring it is.
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

    At a step that also validates, the save waits for the end of that validation: a checkpoint taken before it
    would make a resume after a kill during the validation skip it (its metrics and overlays lost for good).
    last.ckpt is replaced by a rename (`pixelqa.files.atomic_symlink`), and a step file it still points to is
    removed only once it points to the newer one: at no moment does last.ckpt name a missing file.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._save_after_validation: int | None = None  # the step whose save waits for its validation
        self._remove_after_relink: list[str] = []  # step files last.ckpt pointed to when they were dropped

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save every N steps, unless this step validates next: then `on_validation_end` saves."""
        if self._save_after_validation is not None and self._save_after_validation != trainer.global_step:
            # the validation that was to follow did not run (never expected): save now rather than not at all
            self._save_after_validation = None
            self._save_now(trainer)
        if self._is_save_step(trainer) and validation_follows(trainer):
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_after_validation = trainer.global_step
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the step checkpoint that waited for this validation (its metrics are logged by now)."""
        if self._save_after_validation is not None and self._save_after_validation == trainer.global_step:
            self._save_after_validation = None
            if not trainer.sanity_checking:
                self._save_now(trainer)
                return
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final step (top-k file and last.ckpt) unless it was just saved."""
        if self._last_global_step_saved != trainer.global_step and not trainer.interrupted:
            self._save_now(trainer)
        super().on_train_end(trainer, pl_module)

    def _is_save_step(self, trainer: L.Trainer) -> bool:
        n = self._every_n_train_steps
        return n >= 1 and trainer.global_step % n == 0

    def _save_now(self, trainer: L.Trainer) -> None:
        """The step file (top-k) and last.ckpt, unless this step is saved already."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        """last.ckpt as Lightning makes it, then the step files it no longer points to are removed."""
        super()._save_last_checkpoint(trainer, monitor_candidates)
        pending, self._remove_after_relink = self._remove_after_relink, []
        for path in pending:
            self._remove_checkpoint(trainer, path)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Remove a dropped step file, later if last.ckpt still points to it (keep_checkpoints=1 would otherwise
        leave last.ckpt dangling until it is relinked)."""
        if self._last_points_to(filepath):
            self._remove_after_relink.append(filepath)
            return
        super()._remove_checkpoint(trainer, filepath)

    def _last_points_to(self, filepath: str) -> bool:
        if self.dirpath is None:
            return False
        last = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        return os.path.islink(last) and os.path.realpath(last) == os.path.realpath(filepath)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Lightning's save (`Trainer.save_checkpoint`), but a write that fails on one rank ends every rank with the
        error (`pixelqa.train.checkpoint_io.settle`): under DDP rank 0 writes alone, and the others would wait at
        Lightning's barrier after the write until the process group times out."""
        if trainer.model is None:
            raise AttributeError("saving a checkpoint needs a model attached to the Trainer")
        with trainer.profiler.profile("save_checkpoint"):
            # outside the guard below: gathering the state may be a collective (FSDP's optimizer state)
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
            error = None
            try:
                trainer.strategy.save_checkpoint(checkpoint, filepath)
            except Exception as exc:  # noqa: BLE001  (any failure: the other ranks must hear of it)
                error = exc
            settle(error, f"checkpoint {filepath}")  # also the barrier after the write
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        """last.ckpt -> the newest step file, replaced by a rename (Lightning removes it first, then links); a
        failure on rank 0 ends every rank (`settle`, in place of Lightning's barrier)."""
        error = None
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            try:
                _link_or_copy(filepath, linkpath)
            except Exception as exc:  # noqa: BLE001  (any failure: the other ranks must hear of it)
                error = exc
        settle(error, f"checkpoint link {linkpath}")


def _link_or_copy(filepath: str, linkpath: str) -> None:
    """`linkpath` -> `filepath` by `atomic_symlink`; a copy renamed into place where links cannot be made."""
    try:
        atomic_symlink(filepath, linkpath)
    except OSError:
        if not os.path.isfile(filepath):
            raise
        # no symbolic links here (Windows without the right): a copy, renamed into place
        atomic_file(linkpath, lambda tmp: shutil.copyfile(filepath, tmp), durable=True)


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training batch (step-counted validation only)."""
    loop = trainer.fit_loop.epoch_loop
    try:
        if trainer._val_check_time_interval is not None:  # time-based: the decision is taken later, anew
            return False
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher)) and not loop.val_loop.skip
    except (AttributeError, AssertionError, TypeError):  # another Lightning's internals: save as before
        return False


class FitTimer(Callback):
    """Wall time of the training that led to the current weights, summed across resumes: each checkpoint keeps it
    as `pixelqa_fit_s`, and a resume starts from it (the work a kill threw away after its last checkpoint is not
    counted: it was done again)."""

    KEY = "pixelqa_fit_s"

    def __init__(self, start: float) -> None:
        self.start = start
        self.before = 0.0

    def elapsed(self) -> float:
        """Seconds: the resumed checkpoint's time plus this process's."""
        return self.before + (time.time() - self.start)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Store the time so far in the checkpoint."""
        checkpoint[self.KEY] = self.elapsed()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Continue from the resumed checkpoint's time (none in a checkpoint of an older version: 0)."""
        self.before = float(checkpoint.get(self.KEY) or 0.0)


class HeadlineMetrics(Callback):
    """After each validation, log the headline metrics again under names that sort first (`HEADLINE_METRICS`), at
    the step Lightning logged the validation's own metrics at (`logger_step`)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Copy `val/J&F` to `0_J_and_F` in every logger, at the step of the `val/` metrics just logged."""
        values = {
            new: float(trainer.callback_metrics[old])
            for old, new in HEADLINE_METRICS.items()
            if old in trainer.callback_metrics
        }
        if values and not trainer.sanity_checking:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=logger_step(trainer))


def logger_step(trainer: L.Trainer) -> int:
    """The step Lightning gives the metrics it logs now: optimizer steps finished before the current batch (inside
    fit a validation after step N logs at N - 1), not `global_step`; `global_step` where that count is unknown."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    stepped = getattr(loop, "_batches_that_stepped", None)
    return int(stepped) if isinstance(stepped, int) else int(trainer.global_step)


class StepLearningRateMonitor(LearningRateMonitor):
    """Lightning's LearningRateMonitor (`logging_interval="step"`), logging each optimizer step's learning rates once.

    Lightning's monitor logs in `on_train_batch_start`, which runs once per micro-batch, and decides from the count
    of finished optimizer steps, the same for every micro-batch of a step: with gradient accumulation each logged
    step was logged once per micro-batch (the module's `_log_last_step` makes the last step one of them). Only the
    first micro-batch of a step reaches it here; the learning rate does not change within a step.
    """

    def __init__(self) -> None:
        super().__init__(logging_interval="step")
        self._step: int | None = None  # the optimizer step (logger step) whose first micro-batch was seen

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Log the learning rates at the first micro-batch of each optimizer step that Lightning logs."""
        step = logger_step(trainer)
        if step == self._step:
            return
        self._step = step
        super().on_train_batch_start(trainer, *args, **kwargs)


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
            # a resume saves under the names it saved before: a step file again (an interrupted save's leftover
            # replaced), and last.ckpt itself, not a `last-v1.ckpt` beside it (Lightning counts versions when the
            # checkpoint resumed from is the run's first, whose state does not name last.ckpt yet)
            enable_version_counter=False,
        )
    ]
    if recipe.trainer.enable_progress_bar and progress_enabled(True):  # TQDM_DISABLE=1 turns it off too
        callbacks.append(TQDMProgressBar(refresh_rate=10))  # plain text: readable in logs too
    if logger is not None:
        callbacks += [StepLearningRateMonitor(), HeadlineMetrics()]
    if recipe.tracking.log_overlays and recipe.tracking.num_overlays > 0:
        callbacks.append(OverlayLogger(Path(recipe.output_dir) / "overlays", logger))
    return callbacks
