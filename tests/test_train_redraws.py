"""Training-stream robustness: unusable samples replaced by other draws of the same source (bounded, counted,
repeatable), truncations counted, group-by-type steps, and memory pre-fill prompts drawn as points / boxes."""

from collections import Counter

import numpy as np
import pytest
from tiny_processor import tiny_processor

from pixelqa.data import masks
from pixelqa.data.collate import Collator
from pixelqa.data.prompts import redraw_memory_prompts
from pixelqa.train.datamodule import (
    GroupedMixtureSchedule,
    SourceIndex,
    TrainBatches,
    build_synthetic,
    prepare_sample,
)
from pixelqa.train.normalise import batch_counts


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    build_synthetic(root, "train", 40)
    return root


class PickyCollate:
    """A collate with the Collator's per-sample interface that refuses the samples whose key is in `bad`."""

    def __init__(self, bad: set[str]) -> None:
        self.bad, self.refused = bad, []

    def encode(self, sample):
        if sample.key in self.bad:
            self.refused.append(sample.key)
            return None
        return {"key": sample.key, "source": sample.source}

    def assemble(self, encs):
        return [(e["key"], e["extra_meta"]["redraws"], e["extra_meta"]["dropped_slots"]) for e in encs]


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_unusable_samples_are_redrawn_from_the_same_source_and_counted(shards):
    index = SourceIndex(shards, "synthetic", "train")
    plain = _take(TrainBatches([index], lambda s: [x.key for x in s], 4, seed=0), 5)
    bad = {plain[0][1], plain[2][0], plain[3][3]}  # three slots whose first draw is unusable
    picky = PickyCollate(bad)
    batches = _take(TrainBatches([index], picky, 4, seed=0), 5)
    for got, first in zip(batches, plain):
        for (key, redraws, dropped), want in zip(got, first):
            assert key not in bad and dropped == 0
            assert (redraws > 0) == (want in bad) and (key == want) == (want not in bad)
    assert sum(r for b in batches for _, r, _ in b) == len(picky.refused) >= 3
    # the redraw is a function of (seed, slot, attempt): the same after a resume, and across ranks
    assert _take(TrainBatches([index], PickyCollate(bad), 4, seed=0, start_batch=2), 3) == batches[2:]


def test_bounded_redraws_drop_the_slot_and_say_so(shards):
    index = SourceIndex(shards, "synthetic", "train")
    every = {r.key for r in index.refs}
    first = _take(TrainBatches([index], lambda s: [x.key for x in s], 2, seed=0), 1)[0]
    # everything but the first slot's sample is unusable: slot 1 is dropped after 3 redraws, counted
    picky = PickyCollate(every - {first[0]})
    (batch,) = _take(TrainBatches([index], picky, 2, seed=0, max_redraws=3), 1)
    assert batch == [(first[0], 0, 1)] and len(picky.refused) == 4
    with pytest.raises(ValueError, match=r"batch 0: no usable sample in 2 slots after 3 redraws"):
        _take(TrainBatches([index], PickyCollate(every), 2, seed=0, max_redraws=3), 1)


def test_truncation_is_counted_in_the_batch(shards):
    index = SourceIndex(shards, "synthetic", "train")
    sample = next(s for s in (index.read(i) for i in range(len(index))) if s.media.kind == "image")
    sample = prepare_sample(sample, 4, None)
    full = Collator(tiny_processor(), num_frames=4)([sample])
    n = full.input_ids.shape[1]
    cut = Collator(tiny_processor(), num_frames=4, max_tokens=n - 1)
    batch = cut([sample])
    assert batch.input_ids.shape[1] == n - 1 and cut.truncated == 1
    assert batch.meta[0]["truncated_tokens"] == 1 and batch_counts(batch)[5] == 1
    assert batch_counts(full)[5] == 0


def test_grouped_schedule_keeps_each_step_to_one_type_and_the_weights():
    sizes, repeats, types = [50, 30, 20, 100], [1, 2, 1, 1], ["image", "video", "video", "image"]
    per_step = 6
    sched = GroupedMixtureSchedule(sizes, repeats, 3, types, per_step)
    it = sched.iterate()
    slots = [next(it) for _ in range(per_step * 4000)]
    steps = Counter()
    for k in range(0, len(slots), per_step):
        kinds = {types[s] for _, s, _ in slots[k : k + per_step]}
        assert len(kinds) == 1
        steps[kinds.pop()] += 1
        assert sched.step_type(k // per_step) == types[slots[k][1]]
    # image weight (50 + 100) / (50 + 60 + 20 + 100) = 0.652
    assert abs(steps["image"] / 4000 - 150 / 230) < 0.03
    by_source = Counter(s for _, s, _ in slots)
    assert abs(by_source[1] / (by_source[1] + by_source[2]) - 60 / 80) < 0.03  # within video: 60 : 20
    later = sched.iterate(per_step * 1234 + 5)
    assert [next(later) for _ in range(20)] == slots[per_step * 1234 + 5 : per_step * 1234 + 25]


def test_memory_prefill_prompts_become_points_and_boxes_on_visible_frames(shards):
    index = SourceIndex(shards, "synthetic", "train")
    samples = [prepare_sample(index.read(i), 4, None) for i in range(len(index))]
    memory = [s for s in samples if any(t.memory_objects for t in s.turns) and s.prompts]
    other = next(s for s in samples if not any(t.memory_objects for t in s.turns) and s.prompts)
    assert memory
    kinds, frames = Counter(), set()
    for seed in range(40):
        s = memory[seed % len(memory)]
        before = [(p.object_id, p.type) for p in s.prompts]
        out = redraw_memory_prompts(_copy(s), np.random.default_rng(seed))
        assert [p.object_id for p in out.prompts] == [o for o, _ in before]
        for p in out.prompts:
            m = masks.decode(s.objects[p.object_id].masks[p.frame])
            assert m.any()  # on a frame where the object is visible
            kinds[p.type] += 1
            frames.add(p.frame)
            if p.type == "point":
                assert m[int(p.coords[1]), int(p.coords[0])]
    assert set(kinds) == {"point", "box"} and abs(kinds["point"] / sum(kinds.values()) - 0.5) < 0.2
    assert len(frames) > 1  # not always the first frame
    assert redraw_memory_prompts(_copy(other), np.random.default_rng(0)).prompts == other.prompts


def _copy(sample):
    import copy

    return copy.deepcopy(sample)
