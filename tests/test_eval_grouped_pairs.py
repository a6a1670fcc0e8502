"""Validation of samples whose request/answer pairs are independent (`meta["independent_turns"]`: grouped
referring expressions, semantic-segmentation / part classes): the pairs a sample keeps are a function of the sample
alone, the same whatever `data.val_batch_size`, the run's seed, the number of processes and DataLoader workers.
Training keeps the release's random pairs per visit (drawn per batch, from the run's seed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelqa.data import masks
from pixelqa.data.collate import Collator
from pixelqa.data.schema import Media, ObjectTrack, Sample, Turn, encode_frame
from pixelqa.train.datamodule import EvalBatches
from tests.tiny_processor import tiny_processor

torch.set_num_threads(1)

N = 8  # samples
PAIRS = 6  # independent pairs per sample (3 are kept)


def grouped_sample(j: int) -> Sample:
    """An image sample in the converters' per-image group form: PAIRS independent request/<|seg|> pairs."""
    frame = np.zeros((112, 112, 3), np.uint8)
    objects, turns = {}, []
    for k in range(1, PAIRS + 1):
        m = np.zeros((112, 112), bool)
        m[k * 10 : k * 10 + 8, 5:50] = True
        objects[k] = ObjectTrack(masks={0: masks.encode(m)}, category=f"class {k}")
        turns += [Turn("user", f"Please segment class {k}."), Turn("assistant", "It is <|seg|>.", seg_objects=[k])]
    return Sample(
        key=f"ade20k/validation/{j:06d}",
        source="ade20k",
        split="validation",
        task="semseg",
        media=Media(kind="image", frames=[encode_frame(frame, "png")], size=(112, 112), ext="png"),
        objects=objects,
        turns=turns,
        meta={"independent_turns": True},
    )


class Source:
    """A validation source of N grouped samples (the SourceIndex interface EvalBatches reads)."""

    expected = N

    def __len__(self) -> int:
        return N

    def read(self, j: int) -> Sample:
        return grouped_sample(j)


@pytest.fixture(scope="module")
def collator():
    return Collator(tiny_processor(), num_frames=4)


def kept_pairs(collator, batch_size: int, seed: int = 0, world: int = 1) -> dict[str, list[int]]:
    """key -> the objects (one per kept pair) each sample is scored on, over every process of the pass."""
    out: dict[str, list[int]] = {}
    for rank in range(world):
        for batch in EvalBatches([Source()], collator, batch_size, seed, rank=rank, world=world, num_frames=4):
            out.update(zip(batch.keys, batch.seg_object_ids))
    assert len(out) == N
    return out


def test_validation_keeps_the_same_pairs_whatever_the_batch_size_seed_and_processes(collator):
    base = kept_pairs(collator, 1)
    assert all(len(ids) == 3 and ids == sorted(ids) for ids in base.values())  # the release's cap, in order
    assert len({tuple(ids) for ids in base.values()}) > 1  # a draw per sample, not one subset for all
    for batch_size in (4, 8):
        assert kept_pairs(collator, batch_size) == base, f"val_batch_size={batch_size}"
    assert kept_pairs(collator, 1, world=2) == base, "2 processes"
    assert kept_pairs(collator, 4, world=2) == base, "2 processes, val_batch_size=4"
    assert kept_pairs(collator, 1, seed=7) == base, "seed=7"


def test_a_collator_that_keeps_every_pair_keeps_them_in_validation_too():
    from pixelqa.train.datamodule import ShardDataModule

    keep_all = Collator(tiny_processor(), num_frames=4, max_pairs=None)
    batches = EvalBatches([Source()], keep_all, 4, 0, num_frames=4, max_pairs=keep_all.max_pairs)
    assert all(ids == list(range(1, PAIRS + 1)) for b in batches for ids in b.seg_object_ids)
    # fit's validation passes its collator's cap to the pass
    module = ShardDataModule(None, None, collate=keep_all)
    module.val_sources = [Source()]
    module.data = type("Data", (), {"val_batch_size": 4, "num_frames": 4, "num_workers": 0})()
    assert module.val_dataloader().dataset.max_pairs is None


def test_validation_does_not_touch_the_global_rngs(collator):
    np.random.seed(11)
    expected = np.random.random()
    np.random.seed(11)
    kept_pairs(collator, 4)
    assert np.random.random() == expected


def test_training_collation_still_draws_random_pairs_per_visit(collator):
    sample = grouped_sample(0)
    drawn = set()
    for s in range(20):
        np.random.seed(s)  # TrainBatches seeds the global RNGs per batch from (seed, batch index, rank)
        drawn.add(tuple(collator([sample]).seg_object_ids[0]))
    assert len(drawn) > 1
