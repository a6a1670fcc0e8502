"""The synthetic source: deterministic, valid, every task, unambiguous targets, pixels that match the masks."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.synthetic import COLOURS, SPLIT_SIZES, TASK_CYCLE, make_sample
from pixelqa.prompt_format import PREFILL_TEMPLATES, REF


def test_deterministic_and_split_dependent():
    a, b = make_sample(17, "train"), make_sample(17, "train")
    assert a == b and a.to_record() == b.to_record()
    assert make_sample(17, "val").media.frames != a.media.frames
    assert make_sample(17, "train", seed=1).media.frames != a.media.frames


def test_every_task_valid_and_fast():
    start = time.perf_counter()
    tasks = collections.Counter()
    for i in range(260):
        s = make_sample(i).validate(check_frames=True)
        tasks[s.task] += 1
        assert 2 <= len(s.objects) <= 3
        shapes = s.meta["shapes"]
        for attr in ("colour", "kind", "size"):
            assert len({sh[attr] for sh in shapes}) == len(shapes)  # any single attribute names one object
        if s.media.kind == "video":
            assert 4 <= s.media.num_frames <= 8 and len({sh["direction"] for sh in shapes}) == len(shapes)
    assert set(tasks) == set(TASK_CYCLE) and min(tasks.values()) == 20
    assert time.perf_counter() - start < 30  # generous: a few ms per sample in practice


def test_masks_match_the_drawn_pixels():
    for i in range(39):
        s = make_sample(i)
        frames = s.decode_frames()
        union = np.zeros(frames.shape[:3], bool)
        for oid, obj in s.objects.items():
            colour = COLOURS[s.meta["shapes"][oid]["colour"]]  # ids from 0, in the order of meta["shapes"]
            for f, rle in obj.masks.items():
                m = masks.decode(rle)
                assert m.sum() > 20 and (frames[f][m] == colour).all()
                assert not (union[f] & m).any()  # shapes never overlap
                union[f] |= m
        assert (frames[~union] == (25, 25, 25)).all()  # plain background elsewhere


def test_memory_tasks_prefill_the_question_as_released():
    """The pre-fill request is the memory question with `[k] <|ref|>` in a released template (as chat pre-fills);
    half the memory_qa samples ask the memory question as a first turn (the two-pass protocol's answer pass)."""
    used, first_turn = set(), 0
    for i in range(520):
        s = make_sample(i)
        if s.task == "memory_qa" and len(s.turns) == 2:
            assert not s.prompts and s.turns[0].memory_objects == [0, 1]
            assert s.turns[0].text == "Which is larger, [0] or [1]?" and REF not in s.turns[0].text
            first_turn += 1
            continue
        if s.task not in ("memory_qa", "pixelqa"):
            continue
        question = s.turns[2].text
        ids = [p.object_id for p in s.prompts]
        if s.task == "memory_qa":
            assert ids == [0, 1] and question == "Which is larger, [0] or [1]?"
            with_ref = f"Which is larger, [0] {REF} or [1] {REF}?"
        else:
            assert ids == [0] and question.startswith("What colour is [0]? Options: (A) ")
            with_ref = question.replace("[0]", f"[0] {REF}")
        requests = [t.format(with_ref) for t in PREFILL_TEMPLATES]
        assert s.turns[0].text in requests
        used.add(requests.index(s.turns[0].text))
        assert s.turns[0].text.count(REF) == len(s.prompts) and s.turns[2].memory_objects == ids
    assert len(used) >= 4  # the templates vary, as in the released data
    assert 10 <= first_turn <= 30  # about half of the 40 memory_qa samples


def test_answers_are_consistent_with_the_scene():
    for i in range(300):
        s = make_sample(i)
        target = s.meta.get("target")
        shapes = {sh["id"]: sh for sh in s.meta["shapes"]}
        if s.task in ("res", "rvos", "rec"):
            sh = shapes[target]
            assert s.turns[0].text == f"Please segment the {sh['colour']} {sh['kind']}" + (
                f" moving {sh['direction']}." if s.media.kind == "video" else "."
            )
            assert s.turns[1].seg_objects == [target]
        if s.task == "memory_qa":
            ask = next(t for t in s.turns if t.memory_objects)
            assert ask.memory_objects == [0, 1] and [p.object_id for p in s.prompts] in ([], [0, 1])
            larger = max((0, 1), key=lambda k: ["small", "medium", "large"].index(shapes[k]["size"]))
            assert s.turns[-1].text == f"[{larger}]."
        if s.task in ("mcq", "pixelqa"):
            letter = s.answer
            assert s.choices["ABCD".index(letter)] == shapes[target]["colour"]
        for p in s.prompts:  # prompts lie on their object
            m = masks.decode(s.objects[p.object_id].masks[p.frame])
            if p.type == "point":
                assert m[int(p.coords[1]), int(p.coords[0])]
            elif p.type == "box":
                assert masks.to_box(s.objects[p.object_id].masks[p.frame]) == pytest.approx(tuple(p.coords))


def test_registered_source():
    src = get_source("synthetic")
    assert list(src.items(".", "val")) == list(range(SPLIT_SIZES["val"]))
    first = next(iter(src.samples(".", "val")))
    assert first == make_sample(0, "val")
