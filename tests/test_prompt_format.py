"""The shared text protocol: pre-fill answers, memory preambles and their parsers (pixelqa.prompt_format)."""

from __future__ import annotations

import pytest

from pixelqa.prompt_format import (
    MEM,
    SEG,
    count_ref,
    memory_prompt,
    object_ids_in,
    parse_memory_prompt,
    parse_prefill,
    prefill_answer,
)


def test_prefill_answer_matches_the_paper_format_and_parses_back():
    text = prefill_answer([1, 2, 3, 4])
    assert text == "The relevant regions for this question are [1] <SEG> [2] <SEG> [3] <SEG> [4] <SEG>."
    assert parse_prefill(text) == [1, 2, 3, 4]
    assert parse_prefill("nothing here [3] without seg") == []


def test_memory_prompt_is_the_papers_example():
    text = memory_prompt({1: [0, 1, 2], 2: [0, 1, 2, 3]}, num_frames=4)
    assert text == (
        "Here is a video with 4 frames denoted as <1> to <4>. The highlighted regions are as follows:\n"
        "[1]: <1> <MEM> <2> <MEM> <3> <MEM>\n"
        "[2]: <1> <MEM> <2> <MEM> <3> <MEM> <4> <MEM>"
    )
    refs = parse_memory_prompt(text + "\nHow does [1] differ from [2]?")
    assert refs == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert len(refs) == text.count(MEM) == 7


def test_invisible_objects_and_frames_get_no_mem():
    text = memory_prompt({3: [2], 5: []}, num_frames=3)
    assert "[5]" not in text and text.count(MEM) == 1
    assert parse_memory_prompt(text) == [(3, 2)]
    image = memory_prompt({1: [0]}, num_frames=1, kind="image")
    assert image.endswith("[1]: <MEM>") and parse_memory_prompt(image) == [(1, 0)]


def test_bad_inputs_raise_with_the_field():
    with pytest.raises(ValueError, match=r"visible_frames\[1\]: frame 4 outside \[0, 3\]"):
        memory_prompt({1: [4]}, num_frames=4)
    with pytest.raises(ValueError, match="num_frames: got 0"):
        memory_prompt({}, num_frames=0)
    with pytest.raises(ValueError, match="2 <MEM> tokens but only 1"):
        parse_memory_prompt("[1]: <1> <MEM>\nstray <MEM>")


def test_counting_helpers():
    assert count_ref("<REF> and <REF>") == 2
    assert object_ids_in("What is [4] holding next to [2] and [4]?") == [4, 2]
    assert SEG == "<SEG>"
