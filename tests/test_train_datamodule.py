"""ShardDataModule pieces on real synthetic shards: random access, mixture schedule, resume, exact eval pass."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pixelqa.config import DataConfig, RecipeError, SourceConfig
from pixelqa.data.layout import shard_dir
from pixelqa.data.shards import iter_records, list_shards
from pixelqa.train.datamodule import (
    EvalBatches,
    MixtureSchedule,
    SourceIndex,
    TrainBatches,
    build_synthetic,
    check_sources,
    read_sample,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    build_synthetic(root, "train", 40)
    build_synthetic(root, "val", 10)
    return root


def test_random_access_equals_sequential_tar_reading(shards):
    index = SourceIndex(shards, "synthetic", "train")
    records = list(iter_records(list_shards(shard_dir(shards, "synthetic", "train"))))
    assert len(index) == len(records) == 40
    for ref, rec in zip(index.refs, records):
        assert ref.key == rec["__key__"]
    sample = read_sample(index.refs[7])
    assert sample.key == records[7]["__key__"]
    assert sample.media.frames[0] == records[7][f"000.{sample.media.ext}"]


def test_mixture_schedule_is_a_pure_function_of_seed_and_slot():
    sched = MixtureSchedule([30, 10], [1.0, 6.0], seed=3)
    full = [x for _, x in zip(range(9000), sched.iterate(0))]
    assert [x for _, x in zip(range(1000), sched.iterate(5000))] == full[5000:6000]  # resume mid-chunk
    assert [x for _, x in zip(range(10), MixtureSchedule([30, 10], [1.0, 6.0], seed=4).iterate(0))] != full[:10]
    counts = Counter(s for _, s, _ in full)
    # weights 30 x 1 : 10 x 6 -> probability of source 1 = 60 / 90
    assert counts[1] / len(full) == pytest.approx(2 / 3, abs=0.02)
    # each epoch of a source is a permutation: its first 10 draws cover all 10 samples once
    first = [i for _, s, i in full if s == 1][:10]
    assert sorted(first) == list(range(10))


def test_train_batches_resume_and_ranks(shards):
    index = SourceIndex(shards, "synthetic", "train")

    def keys(samples):
        return [s.key for s in samples]

    def take(ds, n):
        it = iter(ds)
        return [next(it) for _ in range(n)]

    full = take(TrainBatches([index], keys, 3, seed=0), 6)
    assert take(TrainBatches([index], keys, 3, seed=0, start_batch=4), 2) == full[4:]
    r0 = take(TrainBatches([index], keys, 3, seed=0, rank=0, world=2), 2)
    r1 = take(TrainBatches([index], keys, 3, seed=0, rank=1, world=2), 2)
    # two processes interleave the same slot sequence a single process reads in order
    slots = [k for b in full for k in b]
    assert [k for b in r0 for k in b] == slots[0:6:2] + slots[6:12:2]
    assert [k for b in r1 for k in b] == slots[1:6:2] + slots[7:12:2]


def test_collate_randomness_is_seeded_per_batch(shards):
    index = SourceIndex(shards, "synthetic", "train")
    ds = TrainBatches([index], lambda s: float(np.random.rand()), 2, seed=0)
    a, b = iter(ds), iter(TrainBatches([index], lambda s: float(np.random.rand()), 2, seed=0, start_batch=1))
    first = [next(a) for _ in range(3)]
    assert first[1:] == [next(b) for _ in range(2)]
    assert len(set(first)) == 3


def test_eval_pass_covers_every_sample_once_across_ranks(shards):
    index = SourceIndex(shards, "synthetic", "val")
    ranks = [list(EvalBatches([index], lambda s: [x.key for x in s], 3, 0, rank=r, world=2)) for r in range(2)]
    keys = [k for batches in ranks for b in batches for k in b]
    assert sorted(keys) == sorted(r.key for r in index.refs) and len(keys) == 10
    assert len(list(EvalBatches([index], len, 4, 0, limit=6))) == 2
    assert len(EvalBatches([index], len, 4, 0, rank=1, world=2, limit=2)) == 1  # one sample each
    with pytest.raises(
        RecipeError, match=r"data.val_sources / data.val_samples / eval.max_samples: 1 validation samples for 2 proc"
    ):
        EvalBatches([index], len, 4, 0, rank=0, world=2, limit=1)  # every process raises, not only the empty one


def test_an_unusable_validation_sample_is_left_out_with_a_warning_not_fatal(shards, monkeypatch, caplog):
    from pixelqa.data.loader import UnusableSampleError
    from pixelqa.train import datamodule

    index = SourceIndex(shards, "synthetic", "val")
    bad = index.refs[1].key
    prepare = datamodule.prepare_sample

    def strict(sample, num_frames, rng):  # as check_memory_visible does for a memory object never visible
        if sample.key == bad:
            raise UnusableSampleError(f"{sample.key}: memory object 0 has no visible mask")
        return prepare(sample, num_frames, rng)

    monkeypatch.setattr(datamodule, "prepare_sample", strict)
    keys = [k for b in EvalBatches([index], lambda s: [x.key for x in s], 3, 0) for k in b]
    assert sorted(keys) == sorted(r.key for r in index.refs if r.key != bad)
    assert [r.message for r in caplog.records if "not scored" in r.message] == [
        f"unusable sample, not scored: {bad}: memory object 0 has no visible mask"
    ]


def test_missing_real_source_fails_with_build_hint(tmp_path):
    data = DataConfig(shards=str(tmp_path), sources=[SourceConfig("refcoco", "train", 5)], val_sources=[])
    with pytest.raises(RecipeError, match=r"refcoco/train.*python -m pixelqa.data build refcoco"):
        check_sources(data)
    check_sources(DataConfig(shards=str(tmp_path)))  # synthetic: built on first use, no error


def test_stage1_prompt_resampling_draws_points_and_boxes_repeatably(shards):
    index = SourceIndex(shards, "synthetic", "train")

    def prompts(samples):
        return [(p.type, tuple(p.coords or ())) for s in samples for p in s.prompts]

    def first(start, n):
        it = iter(TrainBatches([index], prompts, 4, seed=0, start_batch=start, prompt_mode="point_box"))
        return [next(it) for _ in range(n)]

    batches = first(0, 8)
    kinds = {t for b in batches for t, _ in b}
    assert kinds == {"point", "box"}  # masks become points or boxes
    assert first(5, 3) == batches[5:]  # the draw is a function of (seed, slot): identical after a resume


def test_shard_index_follows_a_rebuilt_shard_at_the_same_relative_path(tmp_path, monkeypatch):
    from pixelqa.data.shards import build_shards
    from pixelqa.train.datamodule import read_sample, shard_index

    keys = []
    for run, n in (("a", 6), ("b", 3)):  # two working directories, same relative shard path, other content
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        build_shards("synthetic", ".", "shards", "val", max_samples=n, progress=False)
        (tar,) = sorted(Path("shards/synthetic/val").glob("*.tar"))
        refs = shard_index(str(tar))
        assert len(refs) == n
        keys.append([read_sample(r).key for r in refs])
    assert keys[1] == keys[0][:3]  # the synthetic stream is a pure function of the index: same first keys
