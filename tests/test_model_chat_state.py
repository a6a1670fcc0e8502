"""`UniPixel.chat` turns are atomic: a turn runs on a fork of its history and updates the history in place only
once it completes; the memory bank keeps its own masks."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import cached_model, frames

import pixelqa.model.chat as chat_module
from pixelqa.model import ChatState, ObjectMemoryBank, Point


def snapshot(state: ChatState) -> tuple:
    """Turns, prompts, memory refs, injected ids and the bank's masks (by value) of a conversation."""
    bank = {k: m.clone() for k, m in state.bank.masks.items()}
    return list(state.turns), len(state.prompts), len(state.memory), set(state.injected), bank


def same(a: tuple, b: tuple) -> bool:
    return a[:4] == b[:4] and a[4].keys() == b[4].keys() and all(torch.equal(a[4][k], b[4][k]) for k in a[4])


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt("stopped during generation")  # Ctrl-C, a notebook's stop button, a CUDA OOM


def test_a_turn_interrupted_after_the_prefill_leaves_the_conversation_as_it_was(monkeypatch):
    model = cached_model(obj_scores=False)
    model.cfg.memory.variant = "memory_bank"
    media = frames(3, seed=31)
    res = model.chat(media, "What is <|ref|>?", prompts=[Point(0.5, 0.5)], max_new_tokens=2)
    state, bank = res.state, res.bank
    before = snapshot(state)
    with monkeypatch.context() as m:
        m.setattr(chat_module, "greedy_generate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            model.chat(media, "And <|ref|>?", prompts=[Point(0.2, 0.2)], history=state, max_new_tokens=2)
    assert same(snapshot(state), before) and 1 not in state.bank and 1 not in state.injected
    # a turn that fails before the model (an empty text, with given memory) changes nothing either
    with pytest.raises(ValueError, match="text: got an empty message"):
        model.chat(media, "  ", history=state, memory={5: torch.ones(3, 112, 112, dtype=torch.bool)})
    assert same(snapshot(state), before)
    # the next turn that completes updates the history in place, as before: same state and bank objects
    nxt = model.chat(media, "And <|ref|>?", prompts=[Point(0.2, 0.2)], history=state, max_new_tokens=2)
    assert nxt.state is state and nxt.bank is bank is state.bank
    assert len(state.turns) == 2 and sorted(state.bank.masks) == [0, 1] and state.injected == {0, 1}
    assert state.turns[-1][0].startswith("Here is a video") and "[1]: <" in state.turns[-1][0]


def test_a_fork_continues_apart_from_its_origin():
    model = cached_model(obj_scores=False)
    model.cfg.memory.variant = "memory_bank"
    media = frames(2, seed=32)
    res = model.chat(media, "What is <|ref|>?", prompts=[Point(0.5, 0.5)], max_new_tokens=2)
    origin = res.state
    before = snapshot(origin)
    fork = origin.fork()
    assert fork.visual_cache is origin.visual_cache and fork.sam_cache is origin.sam_cache  # media-only, shared
    assert fork.bank is not origin.bank and fork.bank.masks is not origin.bank.masks
    branch = model.chat(media, "And <|ref|>?", prompts=[Point(0.1, 0.1)], history=fork, max_new_tokens=2)
    assert branch.state is fork and len(fork.turns) == 2 and sorted(fork.bank.masks) == [0, 1]
    assert same(snapshot(origin), before)


def test_history_of_another_type_is_refused():
    model = cached_model(obj_scores=False)
    with pytest.raises(TypeError, match=r"history: got dict, expected the ChatState of the previous turn"):
        model.chat(frames(1), "Hi", history={}, max_new_tokens=1)


def test_the_bank_keeps_its_own_masks():
    bank = ObjectMemoryBank(2)
    given = torch.ones(2, 4, 4, dtype=torch.bool)
    bank.put(0, given)
    given.zero_()  # the caller reuses its tensor
    assert bool(bank.masks[0].all())
    view = torch.ones(3, 4, 4, dtype=torch.bool)[1:]
    bank.put(1, view)
    assert bank.masks[1].data_ptr() != view.data_ptr()
    copy = bank.copy()
    copy.put(2, torch.zeros(2, 4, 4, dtype=torch.bool))
    assert sorted(bank.masks) == [0, 1] and sorted(copy.masks) == [0, 1, 2] and copy.num_frames == 2
