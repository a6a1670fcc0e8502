"""Object memory bank: pre-fill parsing, injected prompt text, <|mem|> counts, multi-round chat with the tiny model."""

from __future__ import annotations

import re

import pytest
import torch
from model_fixtures import cached_model, frames, rect

from pixelqa.model import Box, ChatState, Mask, ObjectMemoryBank, Point
from pixelqa.model.chat import build_batch
from pixelqa.model.memory import inject, prefill_object_ids, replace_refs_with_tags, tag_refs
from pixelqa.prompt_format import MEM, frame_pairs, memory_prompt, parse_memory_prompt, prefill_answer


def _bank() -> ObjectMemoryBank:
    bank = ObjectMemoryBank(4)
    a = torch.zeros(4, 8, 8, dtype=torch.bool)
    a[0, 1:3, 1:3] = a[2, 4:6, 4:6] = True  # object 2: frames 0 and 2 only
    b = torch.zeros(4, 8, 8, dtype=torch.bool)
    b[:, 0, 0] = True  # object 5: every frame
    bank.put(5, b)
    bank.put(2, a)
    bank.put(7, torch.zeros(4, 8, 8, dtype=torch.bool))  # object 7: visible nowhere
    return bank


def test_preamble_has_one_mem_per_visible_frame():
    bank = _bank()
    assert bank.visible_frames() == {2: [0, 2], 5: [0, 1, 2, 3], 7: []}
    text = bank.preamble("video")
    assert text == memory_prompt({2: [0, 2], 5: [0, 1, 2, 3]}, 4)
    # one <|mem|> per visible frame pair: object 2 (frames 0, 2) and object 5 (all) both cover pairs 0 and 1
    assert "[2]: <1>-<2> <|mem|> <3>-<4> <|mem|>" in text and "[7]" not in text
    assert text.count(MEM) == 4
    assert torch.equal(bank.pair_mask(2, 0), bank.masks[2][0] | bank.masks[2][1])
    assert parse_memory_prompt(text) == bank.memory_refs()


def test_prefill_parsing_and_ref_replacement():
    assert prefill_object_ids(prefill_answer([3, 5])) == [3, 5]
    with pytest.raises(ValueError, match="expected 3"):
        prefill_object_ids(prefill_answer([3, 5]), expected=3)
    assert replace_refs_with_tags("Is <|ref|> left of <|ref|>?", [1, 4]) == "Is [1] left of [4]?"
    # a tag the user already wrote is not doubled
    assert replace_refs_with_tags("Is [1] <|ref|> left of <|ref|>?", [1, 4]) == "Is [1] left of [4]?"
    assert tag_refs("Is <|ref|> left of [4] <|ref|>?", [1, 4]) == "Is [1] <|ref|> left of [4] <|ref|>?"
    with pytest.raises(ValueError, match=re.escape("2 <|ref|> tokens but 1 object ids")):
        replace_refs_with_tags("Is <|ref|> left of <|ref|>?", [1])
    q = inject("What is <|ref|> doing?", _bank(), "video", [2])
    assert q.endswith("\nWhat is [2] doing?") and q.count(MEM) == 4


def test_bank_rejects_bad_masks():
    bank = ObjectMemoryBank(4)
    with pytest.raises(ValueError, match="expected \\(4, H, W\\)"):
        bank.put(1, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="object_id"):
        bank.put(-1, torch.zeros(4, 8, 8))


def _mem_tokens(model, state, result) -> int:
    """<|mem|> tokens of the last turn as tokenised for the model."""
    state_before = ChatState(state.media, state.kind, state.bank, state.turns[:-1], state.prompts, state.memory)
    batch = build_batch(model, state_before, result.user_text, result.text, [], state.memory)
    return int((batch.input_ids == model.token_ids[MEM]).sum())


def test_chat_prefill_then_injection_then_later_turn():
    model = cached_model(obj_scores=False)  # random object-score heads would call every frame empty
    model.cfg.memory.variant = "memory_bank"
    media = frames(4, seed=5)
    res = model.chat(media, "What is <|ref|> doing?", prompts=[Point(0.5, 0.5, frame=1)], max_new_tokens=3)
    bank, state = res.bank, res.state
    assert list(bank.masks) == [0] and bank.masks[0].shape == (4, 112, 112)  # ids start at 0, as released
    assert torch.equal(res.masks[0], bank.masks[0])
    # the injected text is exactly the bank's preamble + the question with <|ref|> -> [0]
    assert res.user_text == inject("What is <|ref|> doing?", bank, "video", [0])
    assert "[0]" in res.user_text and "<|ref|>" not in res.user_text and "[0] [0]" not in res.user_text
    pairs = frame_pairs(bank.visible_frames()[0])
    assert pairs  # the injection below is not vacuous
    assert res.user_text.count(MEM) == len(pairs)
    assert [(m.object_id, m.frame) for m in state.memory] == [(0, 2 * g) for g in pairs]
    assert _mem_tokens(model, state, res) == len(pairs)

    # a later turn names an object that entered the bank another way (absent on frames 1 and 3)
    obj = torch.zeros(4, 112, 112, dtype=torch.bool)
    obj[0, 10:30, 10:30] = obj[2, 50:70, 50:70] = True
    state.bank.put(4, obj)
    res2 = model.chat(media, "What is [4] holding?", history=state, max_new_tokens=3)
    assert res2.user_text.startswith("Here is a video with 4 frames denoted as <1> to <4>.")
    assert "[4]: <1>-<2> <|mem|> <3>-<4> <|mem|>\nWhat is [4] holding?" in res2.user_text
    assert [(m.object_id, m.frame) for m in state.memory][-2:] == [(4, 0), (4, 2)]
    assert len(state.turns) == 2
    # the whole conversation re-tokenises with one <|mem|> per memory ref
    batch = build_batch(model, ChatState(media, "video", state.bank), "x", None, [], [])
    assert int((batch.input_ids == model.token_ids[MEM]).sum()) == 0
    total = sum(u.count(MEM) for u, _ in state.turns)
    assert total == len(state.memory)


def test_chat_ref_seg_variants_and_errors():
    model = cached_model()
    media = frames(1, seed=6)
    try:
        model.cfg.memory.variant = "ref_seg"
        res = model.chat(
            media,
            "Compare <|ref|> and <|ref|>.",
            prompts=[Box(0.1, 0.1, 0.5, 0.5), Mask(rect(112, 112, 50, 90, 50, 90))],
            max_new_tokens=2,
        )
        assert res.user_text == "Compare <|ref|><|seg|> and <|ref|><|seg|>."
        assert sorted(res.bank.masks) == [0, 1] and res.bank.masks[1].shape == (1, 112, 112)
        model.cfg.memory.variant = "ref_seg_pool"  # same text; the pooling happens inside forward
        res = model.chat(media, "Where is <|ref|>?", prompts=[Point(0.4, 0.4)], max_new_tokens=2)
        assert res.user_text == "Where is <|ref|><|seg|>?" and list(res.bank.masks) == [0]
        model.cfg.memory.variant = "ref_only"
        res = model.chat(media, "What is <|ref|>?", prompts=[Point(0.2, 0.3)], max_new_tokens=2)
        assert res.user_text == "What is <|ref|>?" and len(res.state.prompts) == 1
        with pytest.raises(ValueError, match=re.escape("1 <|ref|> tokens but 0 prompts")):
            model.chat(media, "What is <|ref|>?", prompts=[], max_new_tokens=1)
        with pytest.raises(ValueError, match="frame"):
            model.chat(media, "What is <|ref|>?", prompts=[Point(0.2, 0.3, frame=2)], max_new_tokens=1)
        with pytest.raises(ValueError, match="media"):
            model.chat(media.float(), "Hi", max_new_tokens=1)
    finally:
        model.cfg.memory.variant = "memory_bank"
