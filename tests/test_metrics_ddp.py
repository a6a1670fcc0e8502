"""DDP reduction of the metric states: 2 gloo processes, each updating half the data, equal one process on all."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port

from pixelqa.metrics import ImageSegIoU, JAndF, MCQAccuracy, RECAccuracy

WORLD = 2
QUESTION_TYPES = ["BQ", "SQ", "RQ", "CQ", "FP", "BQ", "SQ", "RQ"]


def _data(seed: int = 0) -> dict:
    """Deterministic inputs: 6 object clips (varied T), 8 image masks, 8 MCQ answers."""
    gen = torch.Generator().manual_seed(seed)
    clips = []
    for k in range(6):
        frames = 2 + k % 3
        target = torch.zeros(frames, 24, 32, dtype=torch.bool)
        target[:, 4 + k : 14 + k, 6 : 18 + k] = True
        preds = target ^ (torch.rand(frames, 24, 32, generator=gen) > 0.93)
        foreground = target | torch.roll(target, 5, dims=2)
        clips.append((preds, target, foreground))
    images_t = torch.rand(8, 16, 16, generator=gen) > 0.6
    images_p = images_t ^ (torch.rand(8, 16, 16, generator=gen) > 0.8)
    images_p[3] = images_t[3] = False  # an empty pair (gIoU 1)
    boxes = torch.tensor([[2, 2, 9, 9]] * 8)
    answers = torch.randint(0, 4, (8,), generator=gen)
    guesses = torch.randint(0, 4, (8,), generator=gen)
    return {"clips": clips, "images": (images_p, images_t), "boxes": boxes, "mcq": (guesses, answers)}


def _metrics() -> dict:
    return {"jf": JAndF(robustness=True), "seg": ImageSegIoU(), "rec": RECAccuracy(), "mcq": MCQAccuracy()}


def _update(metrics: dict, data: dict, rank: int, world: int) -> None:
    """Feed the share of ``rank`` (every world-th item)."""
    for preds, target, foreground in data["clips"][rank::world]:
        metrics["jf"].update(preds, target, foreground=foreground)
    images_p, images_t = data["images"]
    metrics["seg"].update(images_p[rank::world], images_t[rank::world])
    metrics["rec"].update(images_p[rank::world], data["boxes"][rank::world])
    guesses, answers = data["mcq"]
    metrics["mcq"].update(guesses[rank::world], answers[rank::world], QUESTION_TYPES[rank::world])


def _flatten(metrics: dict) -> dict[str, float]:
    out = {}
    for name, metric in metrics.items():
        value = metric.compute()
        items = value.items() if isinstance(value, dict) else [("", value)]
        out.update({f"{name}/{key}": float(v) for key, v in items})
    return out


def _worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        metrics = _metrics()
        _update(metrics, _data(), rank, WORLD)
        result = _flatten(metrics)  # compute() all-reduces the sum states across both processes
        if rank == 0:
            queue.put(result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_reduction_equals_single_process() -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    single = _metrics()
    _update(single, _data(), 0, 1)
    expected = _flatten(single)

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(free_port(), queue), nprocs=WORLD, join=True, start_method="spawn")
    reduced = queue.get()
    assert set(reduced) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):  # an MCQ type without questions must stay NaN
            assert math.isnan(reduced[key]), key
        else:
            assert reduced[key] == pytest.approx(value, abs=1e-6), key
    # The split is real: each half alone differs from the whole.
    half = _metrics()
    _update(half, _data(), 0, WORLD)
    assert _flatten(half)["jf/J"] != pytest.approx(expected["jf/J"], abs=1e-6)


def _uneven_worker(rank: int, port: int, queue) -> None:
    """Rank 0 sees a mask and answers, rank 1 answers only (its validation share held no <|seg|> sample)."""
    from datetime import timedelta

    from pixelqa.metrics.answers import TaskAccuracy
    from pixelqa.train.module import epoch_values

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30)
    )
    try:
        torch.set_num_threads(1)
        jf, acc = JAndF(), TaskAccuracy()
        preds, target, _ = _data()["clips"][0]
        if rank == 0:
            jf.update(preds, target)
        acc.update(torch.tensor([rank == 0, True]), ["image_qa", "image_qa"])
        values = epoch_values(jf, WORLD)  # as on_validation_epoch_end: J&F first, then the accuracies
        answers = acc.compute()
        queue.put((rank, {k: float(v) for k, v in values.items()}, float(answers["image_qa"])))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_epoch_values_agree_when_one_process_saw_no_mask() -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from pixelqa.train.module import epoch_values

    alone = JAndF()
    preds, target, _ = _data()["clips"][0]
    alone.update(preds, target)
    expected = float(alone.compute()["J&F"])
    assert epoch_values(JAndF(), 1) == {}  # one process, nothing fed: nothing to log

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_uneven_worker, args=(free_port(), queue), nprocs=WORLD, join=True, start_method="spawn")
    results = sorted(queue.get() for _ in range(WORLD))
    for rank, values, accuracy in results:
        assert values["J&F"] == pytest.approx(expected, abs=1e-6), rank  # rank 1 logs the gathered value too
        assert accuracy == pytest.approx(3 / 4), rank  # 3 right of 4: the next gather paired with its own kind
