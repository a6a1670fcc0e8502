"""Training-stream robustness: unusable samples replaced by other draws of the same source (bounded, counted,
repeatable), truncations counted, group-by-type steps, and memory pre-fill prompts drawn as points / boxes."""

import json
from collections import Counter

import numpy as np
import pytest
from tiny_processor import tiny_processor

from pixelqa.data import masks
from pixelqa.data.collate import Collator
from pixelqa.data.prompts import memory_prompt_kind, redraw_memory_prompts
from pixelqa.data.shards import build_shards
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


def test_a_sample_the_loader_finds_unusable_is_redrawn_not_fatal(shards, monkeypatch, caplog):
    from pixelqa.data import loader
    from pixelqa.train import datamodule

    index = SourceIndex(shards, "synthetic", "train")
    plain = _take(TrainBatches([index], lambda s: [x.key for x in s], 4, seed=0), 2)
    bad = {plain[0][1], plain[1][2]}
    prepare = datamodule.prepare_sample

    def strict(sample, num_frames, rng):  # as check_memory_visible does for a memory object never visible
        if sample.key in bad:
            raise loader.UnusableSampleError(f"{sample.key}: memory object 0 has no visible mask")
        return prepare(sample, num_frames, rng)

    monkeypatch.setattr(datamodule, "prepare_sample", strict)
    batches = _take(TrainBatches([index], PickyCollate(set()), 4, seed=0), 2)
    assert [k for b in batches for k, _, _ in b if k in bad] == []
    assert sum(r for b in batches for _, r, _ in b) == 2  # one redraw each, counted in the batch meta
    assert sum("unusable sample, redrawn" in r.message for r in caplog.records) == 2


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
            assert p.type == memory_prompt_kind(s.key)  # one kind per sample, kept over draws (as released)
            kinds[p.type] += 1
            frames.add(p.frame)
            if p.type == "point":
                assert m[int(p.coords[1]), int(p.coords[0])]
    assert set(kinds) == {"point", "box"} and abs(kinds["point"] / sum(kinds.values()) - 0.5) < 0.2
    assert len(frames) > 1  # not always the first frame
    assert redraw_memory_prompts(_copy(other), np.random.default_rng(0)).prompts == other.prompts


def test_released_prefill_samples_get_points_and_boxes_at_paper_scale(tmp_path):
    """`videorefer_qa_memory` (one pre-fill round, no memory turn) through the training stream with
    data.memory_prompts=point_box: every pre-fill prompt is a point or a box on a sampled frame where its object is
    visible, half the samples points and half boxes (the kind fixed per sample, as the release fixes it per
    annotation), the frame redrawn at every visit."""
    from fixtures_video import box_mask, build_videorefer_700k, write_json

    build_videorefer_700k(tmp_path / "raw")
    qa = tmp_path / "raw" / "videorefer-qa-75k.json"
    q0 = json.loads(qa.read_text())[0]  # two objects: [0] on frames 0 and 4, [1] on frames 4 and 8
    write_json(qa, [{**q0, "id": f"q{i}"} for i in range(40)])
    build_shards("videorefer_qa_memory", tmp_path / "raw", tmp_path / "shards", split="train", progress=False)
    index = SourceIndex(tmp_path / "shards", "videorefer_qa_memory", "train")
    assert len(index) == 40 and all(not t.memory_objects for t in index.read(0).turns)  # the released form
    visible = {0: {0, 4}, 1: {4, 8}}  # source frames where each object has a mask (the JSON's annotation)
    stream = TrainBatches([index], lambda b: b, 1, seed=0, num_frames=8, memory_prompts="point_box")
    kind_of, frames = {}, Counter()
    for (s,) in _take(stream, 400):
        assert [p.object_id for p in s.prompts] == [0, 1] and s.media.frame_ids == [0, 4, 8]  # the annotated ones
        (kind,) = {p.type for p in s.prompts}  # all objects of a sample alike
        assert kind_of.setdefault(s.key, kind) == kind  # and the same at every visit
        for p in s.prompts:
            src = s.media.frame_ids[p.frame]
            assert src in visible[p.object_id]
            truth = box_mask(src, p.object_id + 1)  # the fixture draws object k as box_mask(frame, k + 1)
            ys, xs = np.nonzero(truth)
            if kind == "point":
                assert truth[int(p.coords[1]), int(p.coords[0])]
            else:  # the tight box, each side jittered by at most 10 % of its size
                x1, y1, x2, y2 = p.coords
                assert abs(x1 - xs.min()) <= 0.6 and abs(x2 - xs.max() - 1) <= 0.6
                assert abs(y1 - ys.min()) <= 0.5 and abs(y2 - ys.max() - 1) <= 0.5
            frames[(s.key, p.object_id, src)] += 1
    assert len(kind_of) == 40 and 12 <= Counter(kind_of.values())["point"] <= 28  # half each over the samples
    assert {(o, f) for _, o, f in frames} == {(o, f) for o, fs in visible.items() for f in fs}  # frames vary
    # memory_prompts=keep (the demo default): the converter's mask prompts stay
    (kept,) = _take(TrainBatches([index], lambda b: b, 1, seed=0), 1)[0]
    assert {p.type for p in kept.prompts} == {"mask"}


def _copy(sample):
    import copy

    return copy.deepcopy(sample)
