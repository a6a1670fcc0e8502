"""predict's memory on long media: frames are read into one tensor (no list of frames stacked at the end), masks come
out of SAM as booleans a chunk of frames at a time (no float clip), and outputs are drawn and written frame by frame
(no clip of overlays). Each test measures what it claims (tracemalloc sees numpy's allocations) and checks that the
result is what the whole-clip way gives."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from model_fixtures import cached_model, frames
from PIL import Image
from test_predict_units import H, W, write_video

from pixelqa import viz
from pixelqa.predict.media import media_from_tensor, read_media
from pixelqa.predict.outputs import write_outputs
from pixelqa.predict.predictor import Prediction


def traced_peak(fn, warm: bool = True):
    """(fn(), the peak of numpy's / Python's traced allocations during it, in bytes); with `warm`, measured on a
    second call: the first imports what it needs (megabytes of module objects)."""
    if warm:
        fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_video_is_read_into_one_tensor_frame_by_frame(tmp_path):
    write_video(tmp_path / "clip.mp4", 60)
    with av.open(str(tmp_path / "clip.mp4")) as container:  # the truth: PyAV's own decoding, every frame
        truth = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    media, peak = traced_peak(lambda: read_media(tmp_path / "clip.mp4", [0, 7, 59]))
    assert torch.equal(media.frames, torch.from_numpy(truth[[0, 7, 59]]).permute(0, 3, 1, 2))
    assert media.names == ["00000", "00007", "00059"]
    media, peak = traced_peak(lambda: read_media(tmp_path / "clip.mp4"))
    assert torch.equal(media.frames, torch.from_numpy(truth).permute(0, 3, 1, 2))
    # the frames decoded are never all held as arrays beside the tensor (before: a list of them, then np.stack)
    clip_bytes = truth.nbytes
    assert peak < clip_bytes / 4, f"read_media's arrays peaked at {peak} bytes for a {clip_bytes}-byte clip"


def test_a_frames_folder_is_read_frame_by_frame(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (60, 2 * H, 2 * W, 3), dtype=np.uint8)
    for t, a in enumerate(truth):
        Image.fromarray(a).save(folder / f"{t:05d}.png")
    media, peak = traced_peak(lambda: read_media(folder))
    assert torch.equal(media.frames, torch.from_numpy(truth).permute(0, 3, 1, 2))
    assert peak < truth.nbytes / 4


def test_binary_decoding_is_the_thresholded_logits_exactly():
    model = cached_model(obj_scores=False).eval()
    clip = frames(5, 96, 128, seed=41)
    states = torch.randn(2, model.qwen.config.text_config.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for kwargs in ({}, {"propagation": "bidirectional", "start": [3, None]}):
            logits = model.decode_states(clip, states, chunk=2, **kwargs)
            masks = model.decode_states(clip, states, chunk=2, binary=True, **kwargs)
            assert masks.dtype == torch.bool and masks.shape == (2, 5, 96, 128)
            assert torch.equal(masks, logits > 0), kwargs
            assert masks.any() and not masks.all()  # masks with both sides in them: the comparison is not vacuous
        assert model.decode_states(clip, states[:0], binary=True).dtype == torch.bool


def _prediction(t: int, h: int = 48, w: int = 64) -> Prediction:
    """A t-frame video prediction with two moving objects (ids 0 and 3), without a model."""
    rng = np.random.default_rng(1)
    clip = torch.from_numpy(rng.integers(0, 256, (t, 3, h, w), dtype=np.uint8))
    masks = {0: torch.zeros(t, h, w, dtype=torch.bool), 3: torch.zeros(t, h, w, dtype=torch.bool)}
    for i in range(t):
        masks[0][i, 5 : 20 + i % 20, 10:30] = True
        masks[3][i, 25:40, 30 + i % 15 : 50] = True
    media = media_from_tensor(clip, kind="video")
    return Prediction("an answer", "text", "text", masks, dict(masks), media, [0, t - 1], list(range(t)), [])


def write_peaks(out: str) -> list[int]:
    """write_outputs' traced peaks for a 20- and an 80-frame prediction (run in a fresh process by the test below)."""
    short, longer = _prediction(20), _prediction(80)
    return [traced_peak(lambda: write_outputs(short, out))[1], traced_peak(lambda: write_outputs(longer, out))[1]]


def test_outputs_are_drawn_one_frame_at_a_time_and_equal_the_whole_clip_drawn_at_once(tmp_path):
    pred = _prediction(20)
    run = write_outputs(pred, tmp_path / "o")
    out = tmp_path / "o"
    # the truth: every overlay drawn at once, as viz draws a clip (pixels repeated to 288 x 384, 1 px outline)
    big = pred.media.frames.permute(0, 2, 3, 1).numpy().repeat(6, axis=1).repeat(6, axis=2)
    stack = np.stack([m.numpy() for m in pred.memory.values()]).repeat(6, axis=2).repeat(6, axis=3)
    colors = [viz.PALETTE[0], viz.PALETTE[3]]
    drawn = viz.overlay_video(big, stack, alpha=0.4, labels=["[0]", "[3]"], colors=colors)
    for i in range(20):
        assert np.array_equal(np.asarray(Image.open(out / "overlays" / f"{i:05d}.png").convert("RGB")), drawn[i])
    viz.save_gif(drawn, tmp_path / "truth.gif", fps=4.0)
    assert (out / "overlay.gif").read_bytes() == (tmp_path / "truth.gif").read_bytes()
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 20
    assert len(run["files"]["overlays"]) == len(run["files"]["annotations"]) == 20
    # the peak does not grow with the clip (before: every drawn frame held, 332 KB each, and a copy of every mask);
    # measured in a fresh process, since threads and state other tests leave behind allocate under tracemalloc too
    code = f"import json, test_predict_memory as t; print(json.dumps(t.write_peaks({str(tmp_path / 'p')!r})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    short, long = json.loads(done.stdout.splitlines()[-1])
    assert long - short < 2 * drawn[0].nbytes, f"write_outputs peaked at {short} bytes for 20 frames, {long} for 80"


class _CountingFrames:
    """A sequence of frames that counts which ones are read."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(i)  # ends iteration by index, as a list does
        self.reads.append(i)
        return np.full((8, 8, 3), i % 256, np.uint8)


def test_gif_reads_only_the_frames_it_shows_once_each_and_mp4_takes_a_generator(tmp_path):
    frames_ = _CountingFrames(150)
    viz.save_gif(frames_, tmp_path / "a.gif", fps=30.0)  # 5 s at 25 fps: 125 of the 150 frames shown
    assert frames_.reads == [j * 150 // 125 for j in range(125)]
    viz.save_mp4((frames_[i] for i in range(3)), tmp_path / "a.mp4", fps=4.0)
    with av.open(str(tmp_path / "a.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3
    with pytest.raises(ValueError, match=r"frames\[1\]: got shape \(4, 8, 3\), expected the first frame's"):
        viz.save_mp4(iter([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8, 3), np.uint8)]), tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="got 0 frames"):
        viz.save_mp4(iter([]), tmp_path / "c.mp4")
    with pytest.raises(ValueError, match=r"frames\[0\]: got shape \(8, 8\)"):
        viz.save_gif([np.zeros((8, 8), np.uint8)], tmp_path / "d.gif")
