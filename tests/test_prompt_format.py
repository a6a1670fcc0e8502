"""The shared text protocol: pre-fill answers, memory preambles and their parsers (pixelqa.prompt_format)."""

from __future__ import annotations

import pytest

from pixelqa.prompt_format import (
    MEM,
    PREFILL_TEMPLATES,
    REF,
    RELEASED_TOKEN_IDS,
    SEG,
    SPECIAL_TOKENS,
    count_ref,
    frame_pairs,
    memory_prompt,
    object_ids_in,
    object_tag,
    pair_frames,
    parse_memory_prompt,
    parse_prefill,
    prefill_answer,
    prefill_request,
)


def test_prefill_answer_matches_the_released_format_and_parses_back():
    text = prefill_answer([0, 1, 3])
    assert text == "[0] <|seg|> [1] <|seg|> [3] <|seg|>"
    assert parse_prefill(text) == [0, 1, 3]
    assert parse_prefill("nothing here [3] without seg") == []


def test_memory_prompt_is_the_released_format():
    # one <|mem|> per frame pair with a visible mask: object 1 is seen on frames 0-2 (pairs 0, 1), object 2 on 3
    text = memory_prompt({1: [0, 1, 2], 2: [3]}, num_frames=4)
    assert text == (
        "Here is a video with 4 frames denoted as <1> to <4>. The highlighted regions are as follows:\n"
        "[1]: <1>-<2> <|mem|> <3>-<4> <|mem|>\n"
        "[2]: <3>-<4> <|mem|>"
    )
    refs = parse_memory_prompt(text + "\nHow does [1] differ from [2]?")
    assert refs == [(1, 0), (1, 2), (2, 2)]
    assert len(refs) == text.count(MEM) == 3


def test_invisible_objects_and_frames_get_no_mem():
    text = memory_prompt({3: [2], 5: []}, num_frames=3)
    assert "[5]" not in text and text.count(MEM) == 1 and "[3]: <3>-<4> <|mem|>" in text
    assert parse_memory_prompt(text) == [(3, 2)]
    image = memory_prompt({0: [0]}, num_frames=1, kind="image")
    assert image == "Here is an image with the following highlighted regions:\n[0]: <|mem|>"
    assert parse_memory_prompt(image) == [(0, 0)]


def test_pairs_cover_odd_clips():
    assert frame_pairs([0, 1, 4]) == [0, 2]
    assert pair_frames(2, 5) == (4,) and pair_frames(0, 5) == (0, 1)


def test_bad_inputs_raise_with_the_field():
    with pytest.raises(ValueError, match=r"visible_frames\[1\]: frame 4 outside \[0, 3\]"):
        memory_prompt({1: [4]}, num_frames=4)
    with pytest.raises(ValueError, match="num_frames: got 0"):
        memory_prompt({}, num_frames=0)
    with pytest.raises(ValueError, match=r"2 <\|mem\|> tokens but only 1"):
        parse_memory_prompt("[1]: <1>-<2> <|mem|>\nstray <|mem|>")
    with pytest.raises(ValueError, match="object_id: got -1"):
        object_tag(-1)


def test_counting_helpers_and_released_tokens():
    assert count_ref(f"{REF} and {REF}") == 2
    assert object_ids_in("What is [4] holding next to [2] and [4]?") == [4, 2]
    assert (REF, SEG, MEM) == ("<|ref|>", "<|seg|>", "<|mem|>")
    assert RELEASED_TOKEN_IDS == {REF: 151665, SEG: 151666, MEM: 151667}
    assert SPECIAL_TOKENS == (REF, SEG, MEM)  # added to a Qwen tokenizer in this order they get the released ids


def test_prefill_request_uses_the_released_templates():
    q = "What is [0] <|ref|> doing?"
    assert prefill_request(q) == "What is [0] <|ref|> doing? Please localize the relevant objects with IDs."
    assert prefill_request(q, 3) == "Please segment the mentioned objects with IDs in the question: " + q
    assert len(PREFILL_TEMPLATES) == 6 and all(t.count("{}") == 1 for t in PREFILL_TEMPLATES)
    with pytest.raises(ValueError, match="template: got 6"):
        prefill_request(q, 6)
