"""DataWaitTimer: the loader's share of step time, on a real Lightning loop with slow and fast datasets."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pixelqa.train.data_wait import DataWaitTimer

PAUSE_S = 0.03


class Numbers(Dataset):
    """Eight-value rows; `pause_s` of sleep per item (the slow loader)."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.pause_s:
            time.sleep(self.pause_s)
        return torch.full((8,), float(i))


class Regression(L.LightningModule):
    """A linear layer; `pause_s` of sleep per step (the slow step)."""

    def __init__(self, pause_s: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.pause_s = pause_s

    def training_step(self, batch: torch.Tensor, idx: int) -> torch.Tensor:
        if self.pause_s:
            time.sleep(self.pause_s)
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, idx: int) -> None:
        time.sleep(PAUSE_S)  # a validation pass must not count as waiting for data

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SlowBookkeeping(L.Callback):
    """Sleeps after every batch, as a logger writing to a slow store would: not a data wait."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx) -> None:
        time.sleep(PAUSE_S)


def _share(data_pause: float, step_pause: float, tmp_path, extra: list | None = None) -> dict[str, float]:
    timer = DataWaitTimer()
    trainer = L.Trainer(
        max_steps=10,
        val_check_interval=5,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, *(extra or [])],
        default_root_dir=tmp_path,
    )
    loader = DataLoader(Numbers(data_pause), batch_size=1)
    trainer.fit(Regression(step_pause), loader, DataLoader(Numbers(0.0), batch_size=1))
    assert timer.batches == 8  # 9 intervals between 10 batch starts, less the one holding the validation pass
    assert timer.fetches >= 10  # timed through Lightning's fetch action, not guessed from gaps
    assert trainer.profiler.start.__func__ is type(trainer.profiler).start  # the profiler is left as it was
    return timer.metrics()


def test_slow_loader_shows_a_large_share_and_fast_one_a_small(tmp_path):
    slow = _share(PAUSE_S, 0.0, tmp_path)
    fast = _share(0.0, PAUSE_S, tmp_path)
    assert slow["time/data_wait_share"] > 0.7, slow
    assert slow["time/data_wait_ms"] >= 1000 * PAUSE_S  # each fetch sleeps that long at least
    assert fast["time/data_wait_share"] < 0.3, fast
    assert fast["time/data_wait_ms"] < 1000 * PAUSE_S / 2
    assert slow["time/data_first_wait_s"] >= PAUSE_S
    busy = _share(0.0, 0.0, tmp_path, [SlowBookkeeping()])  # slow work after each batch is not waiting for data
    assert busy["time/data_wait_share"] < 0.3, busy


def test_no_metrics_before_a_counted_batch():
    assert DataWaitTimer().metrics() == {}


@pytest.mark.parametrize("waited,total", [(0.25, 1.0), (0.0, 2.0)])
def test_share_is_waited_over_total(waited, total):
    timer = DataWaitTimer()
    timer.waited, timer.total, timer.batches = waited, total, 5
    assert timer.metrics()["time/data_wait_share"] == pytest.approx(waited / total)
    assert timer.metrics()["time/data_wait_ms"] == pytest.approx(1000 * waited / 5)


def test_wait_percentiles_are_nearest_rank_of_the_per_step_waits():
    timer = DataWaitTimer()
    timer.waits = [w / 1000 for w in (7, 1, 10, 3, 2, 9, 4, 8, 6, 5)]  # 1..10 ms, shuffled
    timer.waited, timer.total, timer.batches = sum(timer.waits), 1.0, 10
    m = timer.metrics()
    assert m["time/data_wait_p50_ms"] == pytest.approx(5.0) and m["time/data_wait_p90_ms"] == pytest.approx(9.0)
    assert m["time/data_wait_ms"] == pytest.approx(5.5)  # the mean, unlike the median
