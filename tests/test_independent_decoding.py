"""`model.mask_decoder.mode=independent` at inference: streamed frames (decode_states, chat, free generation) decode
every frame from the prompt alone, equal to the mask decoder called on each frame by itself."""

from __future__ import annotations

import contextlib

import torch
from model_fixtures import cached_model, frames

from pixelqa.model import Point


@contextlib.contextmanager
def independent(model):
    """The shared tiny model with its mask decoder in independent mode for the block."""
    was = model.mask_decoder.mode
    model.mask_decoder.mode = "independent"
    try:
        yield model
    finally:
        model.mask_decoder.mode = was


def per_frame_truth(model, clip: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """(N, T, H, W) logits, each frame encoded and decoded on its own: a one-frame clip is the prompted decode of
    that frame (the propagate path's frame 0, no memory), read here through the decoder's propagate mode."""
    decoder = model.mask_decoder
    tokens = model.l2m(states.float())
    was, decoder.mode = decoder.mode, "propagate"
    try:
        out = []
        with torch.no_grad():
            for t in range(clip.shape[0]):
                dec = decoder(decoder.encode_frames(clip[t : t + 1]), [0], tokens)
                out.append(decoder.upsample(dec.low_res, tuple(clip.shape[-2:]))[:, 0])
    finally:
        decoder.mode = was
    return torch.stack(out, 1)


def test_decode_states_streams_chunks_and_equals_each_frame_decoded_alone():
    model = cached_model(obj_scores=False).eval()
    clip = frames(5, seed=31)
    states = torch.randn(2, model.qwen.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    truth = per_frame_truth(model, clip, states)
    ticks: list[tuple[int, int]] = []
    with independent(model):
        # chunks of 2 frames: three chunks (the last one short), two objects, decoded as streamed frames
        got = model.decode_states(clip, states, chunk=2, progress=lambda done, total: ticks.append((done, total)))
        whole = model.decode_states(clip, states, chunk=16)
        both_ways = model.decode_states(clip, states, chunk=2, propagation="bidirectional", start=[3, None])
    assert got.shape == (2, 5, 112, 112)
    torch.testing.assert_close(got, truth, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(whole, truth, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both_ways, truth, atol=1e-4, rtol=1e-4)  # no memory: no direction either
    assert ticks == [(t, 5) for t in range(1, 6)]
    assert (truth > 0).any() and (truth < 0).any()  # masks with something in them: the comparison is not vacuous
    # and not what propagation through memory gives on the later frames
    propagated = model.decode_states(clip, states, chunk=2)
    torch.testing.assert_close(propagated[:, 0], truth[:, 0], atol=1e-4, rtol=1e-4)
    assert (propagated[:, 1:] - truth[:, 1:]).abs().max() > 1e-2


def test_chat_with_an_independent_decoder_gives_the_per_frame_masks(monkeypatch):
    model = cached_model(obj_scores=False).eval()
    clip = frames(4, seed=32)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = model.decode_states

    def recorded(frames_, states, *args, **kwargs):
        calls.append((frames_, states.detach().clone()))
        return real(frames_, states, *args, **kwargs)

    monkeypatch.setattr(model, "decode_states", recorded)
    with independent(model):
        res = model.chat(clip, "What is <|ref|> doing?", prompts=[Point(0.4, 0.6, frame=2)], max_new_tokens=3)
    assert calls and 0 in res.masks  # the prompted object was pre-filled through SAM
    truth = per_frame_truth(model, calls[0][0], calls[0][1])[0]  # (T, H, W) logits of object 0
    sure = truth.abs() > 1e-3  # pixels whose sign no float rounding can flip
    assert sure.float().mean() > 0.9
    assert torch.equal(res.masks[0][sure], (truth > 0)[sure])
    assert res.masks[0].any() and not res.masks[0].all()


def test_free_generation_scoring_runs_with_an_independent_decoder(tmp_path, monkeypatch):
    """evaluate's (and fit's after-training) free-generation pass, the one that crashed on StreamedFrames."""
    from pixelqa.evaluate import run

    monkeypatch.chdir(tmp_path)
    m = run(
        [
            "recipe=stage3",
            "eval.benchmark=synthetic",
            "eval.scoring=generate",
            "tracking=none",
            "model.mask_decoder.mode=independent",
            "data.synthetic_val=8",
            "eval.generate_max_new_tokens=4",
            f"output_dir={tmp_path / 'run'}",
            f"data.shards={tmp_path / 'shards'}",
        ]
    )
    assert m["synthetic/gen/samples"] == 8 and "synthetic/gen/J&F" in m  # sample 6 (memory_qa) pre-fills via SAM


def test_after_fit_generation_runs_with_an_independent_decoder(tmp_path, monkeypatch):
    """fit's pass after training (`after_fit_generation`) on a model built with mode=independent."""
    from pixelqa.config import load_recipe, to_object
    from pixelqa.eval.model_loading import load_model
    from pixelqa.eval.synthetic_generate import after_fit_generation

    monkeypatch.chdir(tmp_path)
    overrides = [
        "recipe=stage3",
        "eval.scoring=generate",
        "model.mask_decoder.mode=independent",
        "data.synthetic_val=8",
        "data.val_samples=8",  # res .. video_qa: memory_qa (sample 6) pre-fills its objects through SAM
        "eval.generate_max_new_tokens=3",
        f"data.shards={tmp_path / 'shards'}",
    ]
    recipe = to_object(load_recipe(overrides))
    model = load_model(recipe, None).eval()  # the network fit trains, as the recipe builds it
    assert model.mask_decoder.mode == "independent"
    decoded = []
    real = model.decode_states
    monkeypatch.setattr(model, "decode_states", lambda *a, **k: decoded.append(1) or real(*a, **k))
    m = after_fit_generation(model, recipe)
    assert m["val/gen/samples"] == 8 and "val/gen/J&F" in m
    assert decoded  # SAM decoded streamed frames in independent mode: the pass is not vacuous
