"""Resume with DataLoader workers gives the very batches (and collate random draws) of an uninterrupted stream;
dropout seeds differ per rank."""

import numpy as np
import pytest
from torch.utils.data import DataLoader

from pixelqa.train.datamodule import SourceIndex, TrainBatches, build_synthetic
from pixelqa.train.module import step_seed


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
