"""How long training steps wait for their batch: the loader's share of step time.

`DataWaitTimer` times every fetch of a training batch from the DataLoader (Lightning's profiler action
`[_TrainingEpochLoop].train_dataloader_next`, which wraps `next()` on the loader: loading and collating in the
main process with `num_workers: 0`, waiting for a worker's batch otherwise) and the wall time between the starts of
consecutive training batches (the whole step: fetch, forward, backward, optimiser, logging, checkpoints).
Intervals holding a validation pass are left out; so is the time before the first batch (DataLoader start-up,
reported on its own). Should Lightning ever stop reporting that action, the timer falls back to the gap between
the end of one batch and the start of the next (an upper bound: it also holds the other callbacks' bookkeeping).

Metrics (logged to the tracker at the end of training, and returned by `metrics()` for fit's summary):
`time/data_wait_share` (fetching / step time, 0..1), `time/data_wait_ms` (mean fetch time per step),
`time/data_wait_p50_ms` / `time/data_wait_p90_ms` (median and 90th percentile of the per-step fetch times: a small
median with a large mean means a few long waits, a worker falling behind, rather than a cost every step pays),
`time/data_first_wait_s` (from the start of training to the first batch).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

FETCH_ACTION = "[_TrainingEpochLoop].train_dataloader_next"


class DataWaitTimer(Callback):
    """Measures the time training steps spend fetching their batch; logs the share of step time at the end."""

    def __init__(self) -> None:
        self.waited = 0.0  # seconds fetching batches, in the counted intervals
        self.total = 0.0  # seconds between consecutive batch starts, in the counted intervals
        self.batches = 0  # counted intervals (steps)
        self.waits: list[float] = []  # seconds fetching, per counted interval
        self.first_wait: float | None = None
        self.fetches = 0  # fetches seen through the profiler action (0: fall back to batch gaps)
        self._train_start: float | None = None
        self._prev_start: float | None = None  # start of the previous batch; None at the start / after validation
        self._prev_end: float | None = None
        self._fetched = 0.0  # fetch seconds since the previous batch start
        self._fetch_start = 0.0
        self._profiler: Any = None

    # -------------------------------------------------------------- fetch timing through the profiler
    def _wrap_profiler(self, trainer: L.Trainer) -> None:
        """Time FETCH_ACTION by wrapping the trainer's profiler start/stop (any profiler keeps working)."""
        prof = trainer.profiler
        start, stop = prof.start, prof.stop

        def timed_start(action_name: str) -> None:
            if action_name == FETCH_ACTION:
                self._fetch_start = time.perf_counter()
            start(action_name)

        def timed_stop(action_name: str) -> None:
            stop(action_name)
            if action_name == FETCH_ACTION:
                self._fetched += time.perf_counter() - self._fetch_start
                self.fetches += 1

        prof.start, prof.stop = timed_start, timed_stop
        self._profiler = prof

    def _unwrap_profiler(self) -> None:
        if self._profiler is not None:
            del self._profiler.start, self._profiler.stop  # the instance attributes; the class methods return
            self._profiler = None

    # -------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock of the first wait."""
        self._train_start = time.perf_counter()
        self._prev_start = self._prev_end = None
        self._wrap_profiler(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """Count the wait for this batch (the fetch timed by the profiler, else the gap since the last step)."""
        now = time.perf_counter()
        if self._prev_start is not None:
            self.total += now - self._prev_start
            wait = self._fetched if self.fetches else self._gap_since_end(now)
            self.waited += wait
            self.waits.append(wait)
            self.batches += 1
        elif self.first_wait is None and self._train_start is not None:
            self.first_wait = now - self._train_start
        self._prev_start = now
        self._fetched = 0.0

    def _gap_since_end(self, now: float) -> float:
        return now - self._prev_end if self._prev_end is not None else 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Note when the step ended."""
        self._prev_end = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave the interval around a validation pass uncounted."""
        self._prev_start = self._prev_end = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Restore the profiler's methods."""
        self._unwrap_profiler()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore the profiler's methods; warn when no fetch was timed."""
        self._unwrap_profiler()
        if self.batches and not self.fetches:
            log.warning(
                "data wait: Lightning reported no %s; measured batch gaps instead (an upper bound)", FETCH_ACTION
            )
        values = self.metrics()
        if values and trainer.logger is not None:
            trainer.logger.log_metrics(values, step=trainer.global_step)

    def metrics(self) -> dict[str, float]:
        """The data-wait metrics of the module docstring ({} before two counted batches)."""
        out: dict[str, float] = {}
        if self.batches and self.total > 0:
            out["time/data_wait_share"] = self.waited / self.total
            out["time/data_wait_ms"] = 1000.0 * self.waited / self.batches
            ordered = sorted(self.waits)
            for q in (50, 90) if ordered else ():  # nearest rank
                out[f"time/data_wait_p{q}_ms"] = 1000.0 * ordered[min(len(ordered) - 1, (q * len(ordered) - 1) // 100)]
        if self.first_wait is not None:
            out["time/data_first_wait_s"] = self.first_wait
        return out
