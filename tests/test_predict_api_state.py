"""pixelqa.predict as a library: a Prediction is a value (branching from it, interrupted turns, returned masks that
alias nothing), and the Predictor's input checks name the Python argument (a stand-in model where none is needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import cached_model

import pixelqa.model.chat as chat_module
from pixelqa.model.chat import Box, ChatState, Mask, Point
from pixelqa.model.memory import ObjectMemoryBank
from pixelqa.predict import Prediction, Predictor
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.media import media_from_tensor

H, W = 56, 84


def clip(t: int = 4, seed: int = 0) -> torch.Tensor:
    """(t, 3, H, W) random uint8 frames."""
    return torch.randint(0, 256, (t, 3, H, W), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def snapshot(state: ChatState) -> tuple:
    """What a conversation holds: its turns, prompts, memory refs, injected ids and bank (masks compared by value)."""
    bank = {k: m.clone() for k, m in state.bank.masks.items()}
    return list(state.turns), len(state.prompts), len(state.memory), set(state.injected), bank


def same(a: tuple, b: tuple) -> bool:
    """Two snapshots are equal (bank masks by value)."""
    return a[:4] == b[:4] and a[4].keys() == b[4].keys() and all(torch.equal(a[4][k], b[4][k]) for k in a[4])


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(cached_model(obj_scores=False), max_new_tokens=4)


# ---- a Prediction is a value --------------------------------------------------------------------------------------


def test_a_prediction_passed_as_history_twice_branches_from_that_turn(predictor):
    first = predictor.run(clip(), "What is it?", [Point(0.5, 0.5, frame=1), Box(0.1, 0.1, 0.4, 0.4, frame=3)])
    before = snapshot(first.state)
    branch_a = predictor.run(None, "What colour is [0]?", history=first)
    second = predictor.run(None, "What is [1] doing?", history=first)
    assert second.state is not first.state and len(second.state.turns) == 2
    assert same(snapshot(first.state), before)  # the first turn is still the first turn
    branch_b = predictor.run(None, "What colour is [0]?", history=first)  # after another branch was taken
    assert branch_b.turn == branch_a.turn == 2 and len(branch_b.state.turns) == 2
    assert branch_b.state.turns == branch_a.state.turns  # the same context, so the same answer
    assert (branch_b.answer, branch_b.model_text) == (branch_a.answer, branch_a.model_text)
    # a later turn continues its own branch: turn 3 of `second` holds turns 1 and 2 of `second` only
    third = predictor.run(None, "And [0]?", history=second)
    assert third.turn == 3 and third.state.turns[:2] == second.state.turns and len(second.state.turns) == 2


def test_an_interrupted_turn_leaves_the_history_as_it_was(predictor, monkeypatch):
    first = predictor.run(clip(3, seed=1), "What is it?", [Point(0.5, 0.5)])
    before = snapshot(first.state)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("stopped during generation")  # Ctrl-C / a notebook's stop button / an OOM

    with monkeypatch.context() as m:
        m.setattr(chat_module, "greedy_generate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            predictor.run(None, "And <|ref|>?", [Point(0.2, 0.2)], history=first)  # interrupted after the pre-fill
    assert same(snapshot(first.state), before)
    # the interrupted turn's object is not in memory, so a later turn cannot name it without its <|mem|> features
    with pytest.raises(PredictInputError, match=r"text: names object \[1\], which is not in memory"):
        predictor.run(None, "What is [1]?", history=first)
    again = predictor.run(None, "And <|ref|>?", [Point(0.2, 0.2)], history=first)
    assert sorted(again.memory) == [0, 1] and "[1]: <" in again.model_text  # injected with its memory


def test_returned_masks_are_copies_not_the_memory_bank(predictor):
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[10:40, 10:40] = True
    first = predictor.run(clip(3, seed=2), "What is it?", [Mask(mask)])
    bank = first.state.bank.masks[0]
    assert first.masks[0] is not first.memory[0] and first.memory[0] is not bank
    assert first.masks[0].data_ptr() != bank.data_ptr() != first.memory[0].data_ptr()
    kept = bank.clone()
    first.masks[0].zero_()  # a user post-processes the returned masks in place
    first.memory[0].zero_()
    assert torch.equal(first.state.bank.masks[0], kept)
    nxt = predictor.run(None, "What is [0]?", history=first)
    assert torch.equal(nxt.memory[0], kept)  # the next turn reads the object the model segmented
    given = torch.ones(3, H, W, dtype=torch.bool)
    pred = predictor.run(clip(3, seed=2), "What is [4]?", memory={4: given})
    given.zero_()
    assert bool(pred.memory[4].all()) and bool(pred.state.bank.masks[4].all())


# ---- input checks (a stand-in model: nothing reaches it) ----------------------------------------------------------


class Stop(Exception):
    """Raised by Recorder.chat: the inputs have passed every check."""


class Recorder:
    """A model stand-in whose chat records its arguments and stops the turn."""

    def __init__(self) -> None:
        self.kwargs: dict = {}

    def chat(self, media, text, prompts=None, history=None, max_new_tokens=64, kind=None, **kwargs):
        self.kwargs = dict(media=media, text=text, prompts=prompts, history=history, kind=kind, **kwargs)
        raise Stop


def recorded(media, text, prompts=None, **kwargs) -> dict:
    """The arguments a Predictor hands its model for one turn."""
    model = Recorder()
    with pytest.raises(Stop):
        Predictor(model, model_info={"format": "stand-in"}).run(media, text, prompts, **kwargs)
    return model.kwargs


def stand_in() -> Predictor:
    return Predictor(Recorder(), model_info={"format": "stand-in"})


def media4():
    return media_from_tensor(clip())


def test_prompts_accept_numpy_frames_ids_and_masks_and_a_single_prompt():
    got = recorded(media4(), "What is it?", [Point(0.5, 0.5, frame=np.int64(1), object_id=np.int32(3))])
    (p,) = got["prompts"]
    assert type(p.frame) is int and p.frame == 1 and type(p.object_id) is int and p.object_id == 3
    mask = np.zeros((H, W), bool)
    mask[5:20, 5:20] = True
    (p,) = recorded(media4(), "What is it?", [Mask(mask, frame=2)])["prompts"]
    assert (
        isinstance(p.mask, torch.Tensor) and p.mask.dtype == torch.bool and torch.equal(p.mask, torch.from_numpy(mask))
    )
    single = recorded(media4(), "What is it?", Point(0.5, 0.5))
    assert single["prompts"] == [Point(0.5, 0.5, frame=0, object_id=0)]
    assert single["text"] == "[0] <|ref|> What is it?"


def test_two_prompts_naming_one_object_id_are_refused_and_free_ids_avoid_named_ones():
    with pytest.raises(PredictInputError, match=r"prompts\[1\]\.object_id: got 2, which prompts\[0\] names too"):
        stand_in().run(media4(), "x", [Point(0.3, 0.3, object_id=2), Point(0.6, 0.6, object_id=2)])
    got = recorded(media4(), "x", [Point(0.3, 0.3), Point(0.6, 0.6, object_id=0)])
    assert [p.object_id for p in got["prompts"]] == [1, 0]  # the first takes the smallest id nobody names


@pytest.mark.parametrize(
    "prompts, match",
    [
        ([Point(0.3, 0.3, object_id=True)], r"prompts\[0\]\.object_id: got True, expected an integer in \[0, 254\]"),
        ([Point(0.3, 0.3, object_id=255)], r"prompts\[0\]\.object_id: got 255, expected an integer in \[0, 254\]"),
        ([Point(0.3, 0.3, object_id=-1)], r"prompts\[0\]\.object_id: got -1"),
        ([Point(0.3, 0.3, frame=1.0)], r"prompts\[0\]\.frame: got 1\.0 \(float\), expected an integer frame index"),
        ([Point(0.3, 0.3, frame=True)], r"prompts\[0\]\.frame: got True"),
        ([Point(0.3, 0.3, frame=4)], r"prompts\[0\]\.frame: got 4, expected 0 <= frame < 4"),
        ([Point(0.3, 0.3), (0.3, 0.3)], r"prompts\[1\]: got tuple, expected Point, Box or Mask"),
        ("point", r"prompts: got str, expected a list of Point / Box / Mask"),
        ([Mask("not a mask")], r"prompts\[0\]\.mask: got str, expected an \(H, W\) bool tensor or array"),
        ([Mask(np.ones((1, H, W), bool))], r"prompts\[0\]\.mask: got shape \(1, 56, 84\)"),
    ],
)
def test_bad_prompts_are_refused_naming_the_prompt(prompts, match):
    with pytest.raises(PredictInputError, match=match):
        stand_in().run(media4(), "x", prompts)


def test_memory_ids_past_the_output_limit_are_refused():
    with pytest.raises(PredictInputError, match=r"memory: got object id 300, expected an integer in \[0, 254\]"):
        stand_in().run(media4(), "x", memory={300: torch.ones(4, H, W, dtype=torch.bool)})
    got = recorded(media4(), "What is [2]?", memory={np.int64(2): torch.ones(4, H, W, dtype=torch.bool)})
    assert list(got["memory"]) == [2] and type(next(iter(got["memory"]))) is int


def _prediction(media) -> Prediction:
    """A first turn's Prediction over `media` with an empty conversation (no model run)."""
    state = ChatState(media.frames, media.kind, ObjectMemoryBank(len(media.frame_ids)))
    n = len(media.frame_ids)
    return Prediction("", "x", "x", {}, {}, media, list(range(n)), list(range(n)), [], state=state)


def test_history_must_be_a_prediction_and_comes_without_new_media():
    media = media4()
    first = _prediction(media)
    with pytest.raises(PredictInputError, match=r"history: got ChatState, expected the Prediction of the previous"):
        stand_in().run(None, "x", history=first.state)
    with pytest.raises(PredictInputError, match=r"media: got Tensor together with history, expected None"):
        stand_in().run(clip(1), "x", history=first)
    with pytest.raises(PredictInputError, match=r"media: got str together with history"):
        stand_in().run("other.mp4", "x", history=first)
    # the CLI hands the conversation's own media back: that is the same media, not new media
    got = recorded(media, "x", history=first)
    assert got["history"] is not first.state and isinstance(got["history"], ChatState)  # the model gets a copy
    assert recorded(None, "x", history=first)["history"] is not first.state


def test_predictor_arguments_are_checked_when_it_is_made():
    with pytest.raises(TypeError, match=r"model: got object, expected a UniPixel"):
        Predictor(object())
    with pytest.raises(PredictInputError, match=r"llm_frames: got 2\.5 \(float\), expected an integer >= 1"):
        Predictor(Recorder(), llm_frames=2.5, model_info={"format": "stand-in"})
    with pytest.raises(PredictInputError, match=r"llm_frames: got 0, expected an integer >= 1"):
        Predictor(Recorder(), llm_frames=0, model_info={"format": "stand-in"})
    with pytest.raises(PredictInputError, match=r"max_new_tokens: got -1, expected an integer >= 0"):
        Predictor(Recorder(), max_new_tokens=-1, model_info={"format": "stand-in"})
    p = Predictor(Recorder(), llm_frames=np.int64(2), max_new_tokens=np.int32(0), model_info={"format": "stand-in"})
    assert (p.llm_frames, p.max_new_tokens) == (2, 0) and type(p.llm_frames) is int
    assert Predictor.__init__.__annotations__["model"] == "UniPixel"


def test_api_messages_name_the_python_arguments_not_cli_flags(tmp_path):
    with pytest.raises(PredictInputError, match=r"^text: got an empty text"):
        stand_in().run(media4(), "  ")
    with pytest.raises(PredictInputError, match=r"^text: holds 2 <\|ref\|> but 1 prompt"):
        stand_in().run(media4(), "<|ref|> and <|ref|>", [Point(0.5, 0.5)])
    with pytest.raises(PredictInputError, match=r"^media: .*missing\.mp4.* does not exist"):
        stand_in().run(tmp_path / "missing.mp4", "x")


def test_a_refused_turn_changes_nothing():
    media = media4()
    first = _prediction(media)
    first.state.bank.put(0, torch.ones(4, H, W, dtype=torch.bool))
    before = snapshot(first.state)
    for bad in (
        dict(text="Where is [7]?"),
        dict(text="  ", memory={5: torch.zeros(4, H, W, dtype=torch.bool)}),
        dict(text="x", prompts=[Point(0.1, 0.1, object_id=3), Point(0.2, 0.2, object_id=3)]),
    ):
        with pytest.raises(PredictInputError):
            stand_in().run(None, history=first, **bad)
    assert same(snapshot(first.state), before)


def test_prompt_copies_leave_the_callers_prompts_alone():
    given = [Point(0.5, 0.5, frame=np.int64(1))]
    recorded(media4(), "x", given)
    assert given == [Point(0.5, 0.5, frame=np.int64(1))] and given[0].object_id is None
