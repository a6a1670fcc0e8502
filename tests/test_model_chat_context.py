"""A conversation whose prompt passes the language model's position limit is refused with a clear error."""

from __future__ import annotations

import pytest
from model_fixtures import cached_model, frames

from pixelqa.model import Point
from pixelqa.model.chat import ContextTooLongError, max_positions


def test_a_conversation_past_the_models_positions_is_refused_naming_its_length(monkeypatch):
    model = cached_model(obj_scores=False)
    model.cfg.memory.variant = "memory_bank"
    media = frames(2, seed=41)
    assert max_positions(model) == 4096  # the tiny text config
    res = model.chat(media, "What is <|ref|>?", prompts=[Point(0.5, 0.5)], max_new_tokens=2)
    state = res.state
    before = list(state.turns)
    # a smaller limit stands in for ~85 turns on the tiny model: the next turn no longer fits
    text_config = model.qwen.config.text_config
    monkeypatch.setattr(text_config, "max_position_embeddings", 64)
    with pytest.raises(ContextTooLongError, match=r"conversation too long: 1 earlier turn\(s\)") as info:
        model.chat(media, "And [0]?", history=state, max_new_tokens=2)
    assert isinstance(info.value, ValueError)
    assert "limit of 62 (64 positions minus max_new_tokens 2)" in str(info.value)
    assert "start a new conversation" in str(info.value)
    assert state.turns == before  # the refused turn changed nothing
    monkeypatch.undo()
    nxt = model.chat(media, "And [0]?", history=state, max_new_tokens=2)
    assert len(nxt.state.turns) == 2


def test_the_predictor_reports_a_conversation_too_long_as_an_input_error(monkeypatch):
    from pixelqa.predict import Predictor
    from pixelqa.predict.errors import PredictInputError

    model = cached_model(obj_scores=False)
    predictor = Predictor(model, max_new_tokens=2, progress=False)
    first = predictor.run(frames(2, seed=41), "What is it?", [Point(0.5, 0.5)])
    monkeypatch.setattr(model.qwen.config.text_config, "max_position_embeddings", 64)
    with pytest.raises(PredictInputError, match=r"^history: conversation too long: 1 earlier turn"):
        predictor.run(None, "And [0]?", history=first)  # the CLI's --chat prints it as one line, exit 2
