"""Resume with DataLoader workers gives the very batches (and collate random draws) of an uninterrupted stream;
dropout seeds differ per rank."""

import dataclasses
import gc
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pixelqa.batch import Batch, MemoryRef, VisualPrompt
from pixelqa.config import DataConfig
from pixelqa.data import packing
from pixelqa.data.collate import Collator
from pixelqa.data.packing import BackgroundReceiver, pack
from pixelqa.train.datamodule import ShardDataModule, SourceIndex, TrainBatches, build_synthetic
from pixelqa.train.module import step_seed
from tests.tiny_processor import tiny_processor


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    build_synthetic(root, "train", 24)
    return SourceIndex(root, "synthetic", "train")


def _keys_and_draw(samples):
    return [[s.key for s in samples], float(np.random.rand())]


@pytest.mark.parametrize("start", [0, 3])
def test_resume_with_workers_is_bit_identical(index, start):
    it = iter(TrainBatches([index], _keys_and_draw, 2, seed=0))
    uninterrupted = [next(it) for _ in range(start + 6)][start:]
    loader = DataLoader(
        TrainBatches([index], _keys_and_draw, 2, seed=0, start_batch=start), batch_size=None, num_workers=2
    )
    got = []
    for batch in loader:
        got.append(batch)
        if len(got) == 6:
            break
    assert got == uninterrupted


def test_dropout_seeds_differ_per_rank_and_repeat():
    assert step_seed(0, 5) == (5 * 7_919 + 12_345)  # rank 0: the single-process seed, by hand
    seeds = {step_seed(0, 5, rank) for rank in range(8)}
    assert len(seeds) == 8
    assert step_seed(3, 17, 2) == step_seed(3, 17, 2)


def _same(a, b) -> bool:
    """Structural equality with tensors compared by dtype, shape and values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


def _tensors(x) -> list[torch.Tensor]:
    out = []
    packing._walk(x, lambda t: out.append(t))
    return out


def test_a_packed_batch_unpickles_as_the_same_batch_with_its_tensors_in_one_buffer():
    seg = torch.rand(2, 3, 5, 7) > 0.5
    batch = Batch(
        input_ids=torch.arange(12).reshape(2, 6),
        attention_mask=torch.ones(2, 6, dtype=torch.long),
        labels=torch.full((2, 6), -100),
        mm_token_type_ids=torch.zeros(2, 6, dtype=torch.long),
        frames=[torch.randint(0, 255, (3, 3, 5, 7), dtype=torch.uint8), torch.zeros(0, 3, 5, 7, dtype=torch.uint8)],
        pixel_values=torch.randn(9, 11),
        prompts=[[VisualPrompt("box", 0, (0.1, 0.2, 0.3, 0.4))], [VisualPrompt("mask", 1, (), seg[0, 0], 3)]],
        memory=[[MemoryRef(1, 0, seg[1, 0], None)], []],
        seg_masks=[seg, seg.permute(0, 1, 3, 2)],  # a strided view too
        seg_valid=[torch.tensor([[True, False, True]]), torch.ones(1, 3, dtype=torch.bool)],
        seg_object_ids=[[3, 1], [2]],
        tasks=["rvos", "res"],
        keys=["a", "b"],
        meta=[{"answer": "x", "size": (5, 7)}, {"answer": None}],
    )
    back = pickle.loads(pickle.dumps(pack(batch)))
    assert isinstance(back, Batch) and _same(back, batch)
    storages = {t.untyped_storage().data_ptr() for t in _tensors(back)}
    assert len(_tensors(back)) == 13 and len(storages) == 1  # one buffer, however many tensors
    wrong = pickle.loads(pickle.dumps(pack(batch)))
    wrong.seg_masks[1][0, 0, 0, 0] ^= True  # the comparison must see a single flipped mask pixel
    assert not _same(wrong, batch)
    with pytest.raises(ValueError, match="expected CPU"):
        pack([torch.zeros(2, requires_grad=True)])


def test_worker_batches_arrive_packed_and_equal_the_in_process_batches(index):
    collate = Collator(tiny_processor(), num_frames=4)
    it = iter(TrainBatches([index], collate, 2, seed=0, num_frames=4))
    expected = [next(it) for _ in range(3)]
    loader = DataLoader(TrainBatches([index], collate, 2, seed=0, num_frames=4), batch_size=None, num_workers=1)
    got = []
    for batch in loader:
        got.append(batch)
        if len(got) == 3:
            break
    for b, e in zip(got, expected):
        assert isinstance(b, Batch) and _same(b, e)
        assert len({t.untyped_storage().data_ptr() for t in _tensors(b)}) == 1


def _receivers_alive() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "pixelqa-batch-receiver")


def test_receiver_pause_follows_the_consumers_pace(monkeypatch):
    from pixelqa.data import packing

    clock = [100.0]
    monkeypatch.setattr(packing.time, "monotonic", lambda: clock[0])
    pace = packing._Pace(pause=0.02)
    assert pace.delay() == 0.02  # nothing measured yet: the full pause
    for gap in (0.0, 0.008, 0.008, 0.008):  # the first take only starts the clock
        clock[0] += gap
        pace.took()
    assert pace.delay() == pytest.approx(0.002)  # a quarter of an 8 ms step
    for _ in range(40):  # slow steps: the pause is capped at `pause`
        clock[0] += 1.0
        pace.took()
    assert pace.delay() == 0.02


def test_background_receiver_keeps_a_consumer_faster_than_its_pause_fed():
    # a fixed 1 s pause with the queue full would hand over 2 batches a second: 20 batches in about 10 s
    start = time.monotonic()
    taken = []
    for item in BackgroundReceiver(range(20), depth=2, pause=1.0):
        taken.append(item)
        time.sleep(0.002)  # a short training step
    assert taken == list(range(20))
    assert time.monotonic() - start < 5.0


def test_background_receiver_keeps_order_raises_where_the_loader_raised_and_stops_when_dropped():
    assert list(BackgroundReceiver(range(50))) == list(range(50))  # same items, same order, then the end

    def failing():
        yield from (0, 1)
        raise ValueError("worker says no")

    it = iter(BackgroundReceiver(failing()))
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="worker says no"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    before = _receivers_alive()
    it = iter(BackgroundReceiver(endless(), depth=2))
    assert next(it) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 2 + 1  # taken, queued (depth), and the one the thread holds
    del it
    gc.collect()
    deadline = time.time() + 2
    while _receivers_alive() > before and time.time() < deadline:
        time.sleep(0.05)
    assert _receivers_alive() == before
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n  # nothing is read after the consumer is gone


def _keys_batch(samples):
    """A small real Batch: each sample's key and a draw from the collate RNG (seeded per batch)."""
    ids = torch.tensor([[len(s.key), int(np.random.randint(1000))] for s in samples])
    return Batch(ids, torch.ones_like(ids), ids.clone(), torch.zeros_like(ids), [], keys=[s.key for s in samples])


@pytest.mark.parametrize("workers", [0, 1])
def test_datamodule_training_stream_is_the_same_with_and_without_a_worker(index, workers):
    data = DataConfig(shards=str(Path(index.folder).parents[1]), val_sources=[], batch_size=2, num_workers=workers)
    dm = ShardDataModule(data, processor=None, collate=_keys_batch)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    got = [next(it).batch for _ in range(4)]  # StepBatch(batch, ...): one micro-batch a step
    expected = iter(TrainBatches([index], _keys_batch, 2, seed=0, num_frames=data.num_frames))
    assert _same(got, [next(expected) for _ in range(4)])
    assert isinstance(dm.train_dataloader().loader, BackgroundReceiver) == (workers > 0)
