"""VideoGPT+ instruction, MVBench and GroundMoRe (reasoning video QA) converters on fixtures in the release formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_video import build_mvbench, build_videogpt_plus, write_json

from pixelqa.data import masks
from pixelqa.data.catalog import get_source
from pixelqa.data.sources.mvbench import TASKS
from pixelqa.frame_sampling import fps_indices


def convert_all(name, root, split):
    """Every sample of a split, validated."""
    src = get_source(name)
    return [s.validate(check_frames=True) for item in src.items(root, split) for s in src.convert(root, split, item)]


def test_videogpt_plus(tmp_path):
    build_videogpt_plus(tmp_path)
    samples = convert_all("videogpt_plus", tmp_path, "train")
    assert [s.meta["id"] for s in samples] == ["c0", "v0"]  # files sorted by name; the image entry is skipped
    c0, v0 = samples
    assert c0.turns[0].text == "Describe the video." and c0.media.frame_ids == [0, 1, 2] and c0.answer == "Noise."
    assert [t.role for t in v0.turns] == ["user", "assistant", "user", "assistant"]
    assert v0.turns[0].text == "What happens?" and v0.answer == "Yes."
    # 2 s at 2 fps -> 4 frames spread over 16: centres of 4 segments of 4.
    assert v0.media.frame_ids == [2, 6, 10, 14] and v0.media.fps == pytest.approx(2.0)
    levels = [round((f.mean() - 10) / 14) for f in v0.decode_frames()]
    assert levels == [2, 6, 10, 14]


def test_videogpt_plus_bad_roles(tmp_path):
    build_videogpt_plus(tmp_path)
    write_json(
        tmp_path / "instruction_tuning" / "caption.json",
        [
            {
                "id": "c0",
                "video": "frames_b",
                "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}],
            }
        ],
    )

    with pytest.raises(ValueError, match="expected 'human' / 'gpt' alternating"):
        convert_all("videogpt_plus", tmp_path, "train")


def test_mvbench(tmp_path):
    build_mvbench(tmp_path, TASKS)
    a, e = convert_all("mvbench", tmp_path, "test")
    assert a.meta["task_type"] == "Action Sequence" and a.answer == "B" and a.choices == ["Sat.", "Stood.", "Ran."]
    assert a.turns[0].text.startswith("What did the person do first?\nOptions:\n(A) Sat.\n(B) Stood.\n(C) Ran.")
    assert a.turns[1].text == "B"
    # the whole 5 s video at 2 fps (its own rate): all 10 frames; the [1 s, 3 s] bound is recorded, not applied
    assert a.media.frame_ids == list(range(10)) and a.meta["bound"] == [1.0, 3.0]
    assert [round((f.mean() - 10) / 24) for f in a.decode_frames()] == list(range(10))
    # 30 frames at 3 fps = 10 s -> 20 frames at 2 fps, capped at 16: round(linspace(0, 29, 16))
    assert e.meta["task_type"] == "Episodic Reasoning" and e.answer == "A"
    assert e.media.frame_ids == [0, 2, 4, 6, 8, 10, 12, 14, 15, 17, 19, 21, 23, 25, 27, 29]
    assert e.media.frame_ids == fps_indices(30, 3.0, 2.0, 16)


def test_mvbench_missing_task_file(tmp_path):
    build_mvbench(tmp_path, TASKS)
    (tmp_path / "json" / "moving_count.json").unlink()
    with pytest.raises(FileNotFoundError, match="moving_count.json"):
        get_source("mvbench").items(tmp_path, "test")


@pytest.mark.parametrize("split", ["train", "test"])
def test_groundmore_question_about_an_unsegmented_object_is_a_reject(tmp_path, split):
    from fixtures_video import build_groundmore

    from pixelqa.data.shards import build_shards

    build_groundmore(tmp_path)
    q = json.loads((tmp_path / "trainval_v2.json").read_text())
    questions = q["videos"]["vid_0001"]["questions"]
    questions["q2"] = {"question": "Which one is absent?", "answer": "none", "q_type": "Causal", "obj_id": "7"}
    questions["q3"] = {"question": "Who waits?", "answer": "the man", "q_type": "Causal", "obj_id": "1, 7"}
    questions["q4"] = {"question": "Who?", "answer": "nobody", "q_type": "Causal", "obj_id": " "}
    write_json(tmp_path / "trainval_v2.json", q)
    write_json(tmp_path / "test_v2.json", q)
    m = build_shards("groundmore", tmp_path, tmp_path / "out", split=split, on_error="skip", progress=False)
    assert m["num_samples"] == 2 and [r["key"] for r in m["rejects"]] == [
        "vid_0001-q2",
        "vid_0001-q3",
        "vid_0001-q4",
    ]
    absent, partly, none = (r["reason"] for r in m["rejects"])
    assert "videos['vid_0001'].questions['q2']: obj_id '7' names objects [7] in no mask" in absent
    assert "ids there: [1, 2]" in absent and "annotations/vid_0001/masks" in absent
    assert "questions['q3']: obj_id '1, 7' names objects [7]" in partly  # the union would silently miss 7
    assert "questions['q4']: obj_id ' ' names no object" in none


def test_groundmore_test_object_only_on_unsampled_frames_is_kept(tmp_path):
    from fixtures_video import box_mask, rgb_frames, write_jpegs, write_palette_png

    # 40 frames: linspace(0, 39, 20) cast to int never picks frame 1, the only one that shows object 3
    names = [f"{i:05d}" for i in range(40)]
    adir = tmp_path / "annotations" / "v"
    write_jpegs(adir / "images", names, rgb_frames(40, seed=2))
    for t in range(40):
        lab = box_mask(t, 1).astype(np.uint8)
        if t == 1:
            lab[box_mask(t, 3)] = 3
        write_palette_png(adir / "masks" / f"{names[t]}.png", lab)
    q = {"question": "Who?", "answer": "it", "q_type": "Causal", "obj_id": "3"}
    write_json(tmp_path / "test_v2.json", {"videos": {"v": {"questions": {"q": q}}}})
    (s,) = convert_all("groundmore", tmp_path, "test")
    assert 1 not in s.meta["frame_indices"] and not any(masks.area(m) for m in s.objects[1].masks.values())
