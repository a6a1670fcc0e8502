"""How long training steps wait for their batch: the loader's share of step time.

`DataWaitTimer` times, per training batch, the gap between the end of one batch (`on_train_batch_end`) and the
start of the next (`on_train_batch_start`), where Lightning fetches the next batch from the DataLoader, against
the whole step (that gap plus forward, backward and optimiser). Validation passes are left out of both. The first
batch is left out of the share too (its wait is DataLoader start-up: worker processes, first shard opens) and
reported on its own. The gap also holds Lightning's per-step bookkeeping after our hook (other callbacks'
batch-end hooks, checkpoint saves), so the share is an upper bound of the time spent waiting for data.

Metrics (logged to the tracker at the end of training, and returned by `metrics()` for fit's summary):
`time/data_wait_share` (waited / step time, 0..1), `time/data_wait_ms` (mean wait per batch),
`time/data_first_wait_s` (the first batch's wait).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class DataWaitTimer(Callback):
    """Measures the time each training step waits for its batch; logs the share of step time at the end."""

    def __init__(self) -> None:
        self.waited = 0.0  # seconds between batches (fetching), first batch excluded
        self.total = 0.0  # seconds of whole steps (wait + compute), first batch excluded
        self.batches = 0  # batches counted in waited / total
        self.first_wait: float | None = None
        self._train_start: float | None = None
        self._prev_end: float | None = None  # end of the previous batch; None after validation / at the start
        self._batch_start = 0.0
        self._wait = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = time.perf_counter()
        self._prev_end = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        now = time.perf_counter()
        self._batch_start = now
        if self._prev_end is not None:
            self._wait = now - self._prev_end
        elif self.first_wait is None and self._train_start is not None:
            self.first_wait = now - self._train_start
            self._wait = -1.0  # marks the first batch: not counted in the share
        else:
            self._wait = -1.0  # first batch after a validation pass: its gap held validation, not data

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        now = time.perf_counter()
        if self._wait >= 0:
            self.waited += self._wait
            self.total += self._wait + (now - self._batch_start)
            self.batches += 1
        self._prev_end = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._prev_end = None  # the gap around a validation pass is not a data wait

    def metrics(self) -> dict[str, float]:
        """`time/data_wait_share`, `time/data_wait_ms` and `time/data_first_wait_s` ({} before two batches)."""
        out: dict[str, float] = {}
        if self.batches and self.total > 0:
            out["time/data_wait_share"] = self.waited / self.total
            out["time/data_wait_ms"] = 1000.0 * self.waited / self.batches
        if self.first_wait is not None:
            out["time/data_first_wait_s"] = self.first_wait
        return out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = self.metrics()
        if values and trainer.logger is not None:
            trainer.logger.log_metrics(values, step=trainer.global_step)
