"""End to end on real-format fixtures: converter -> build_shards -> make_dataset -> Collator -> Batch."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pixelqa.data import masks
from pixelqa.data.collate import Collator
from pixelqa.data.loader import make_dataset, object_masks, used_objects
from pixelqa.data.schema import FrameDecodeError, Media, decode_frame, encode_frame
from pixelqa.data.shards import build_shards
from pixelqa.data.synthetic import make_sample
from tests import fixtures_image, fixtures_video
from tests.tiny_processor import tiny_processor

torch.set_num_threads(1)

CASES = [
    (fixtures_image.build_refer, "refcoco", "res"),
    (fixtures_image.build_osprey, "osprey_conversation", "region_qa"),
    (fixtures_video.build_revos, "revos", "reason_vos"),
]


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.mark.parametrize("builder,source,task", CASES, ids=[c[1] for c in CASES])
def test_fixture_source_to_batch(tmp_path: Path, processor, builder, source, task):
    builder(tmp_path / "raw")
    m = build_shards(source, tmp_path / "raw", tmp_path / "shards", "train", progress=False)
    assert m["num_samples"] >= 1 and m["num_rejects"] == 0 and m["raw_files"]
    samples = list(make_dataset([tmp_path / "shards" / source / "train"], train=False, num_frames=4))
    assert len(samples) == m["num_samples"] and {s.task for s in samples} == {task}
    b = Collator(processor, num_frames=4)(samples)
    seg = processor.tokenizer.convert_tokens_to_ids("<|seg|>")
    ref = processor.tokenizer.convert_tokens_to_ids("<|ref|>")
    for i, s in enumerate(samples):
        assert int((b.input_ids[i] == seg).sum()) == b.seg_masks[i].shape[0] == len(s.seg_object_ids())
        assert int((b.input_ids[i] == ref).sum()) == len(b.prompts[i]) == len(s.prompts)
        assert b.frames[i].shape[0] == min(s.media.num_frames, 4)
        assert b.seg_masks[i].shape[1:] == (b.frames[i].shape[0], *s.media.size)
        assert (b.labels[i] != -100).any()


# ------------------------------------------------------------------ the loader's fast decoding paths


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w) bool blobs: a random rectangle each, one left empty."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(1, n):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        out[i, y0 : y0 + rng.integers(2, h - y0), x0 : x0 + rng.integers(2, w - x0)] = True
    return out


def test_decode_stack_equals_one_decode_per_mask_and_a_shifted_mask_differs():
    h, w = 37, 53  # not square: a transposed layout would show
    arrays = _random_masks(5, h, w)
    rles = [masks.encode(a) for a in arrays] + [None]
    stacked = masks.decode_stack(rles, (h, w))
    assert stacked.shape == (6, h, w) and stacked.dtype == bool
    assert np.array_equal(stacked[:5], arrays) and not stacked[5].any()  # None: not annotated, all False
    assert np.array_equal(stacked[:5], np.stack([masks.decode(r) for r in rles[:5]]))
    shifted = [masks.encode(np.roll(a, 1, axis=1)) for a in arrays]
    assert not np.array_equal(masks.decode_stack(shifted, (h, w)), stacked[:5])
    t = torch.from_numpy(stacked)  # taken without a copy
    assert torch.equal(t[:5], torch.from_numpy(arrays)) and np.shares_memory(t.numpy(), stacked)
    with pytest.raises(ValueError, match=r"rles\[1\].size: got \[53, 37\], expected \[37, 53\]"):
        masks.decode_stack([rles[0], masks.encode(arrays[1].T)], (h, w))
    # the other COCO forms: bytes counts, and uncompressed list counts (column-major runs, as COCO writes them)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, arrays[2].T.ravel().astype(int), -1]))).tolist()
    if arrays[2].T.ravel()[0]:
        runs = [0] + runs
    other = [{"size": [h, w], "counts": rles[1]["counts"].encode()}, {"size": [h, w], "counts": runs}]
    assert np.array_equal(masks.decode_stack(other, (h, w)), arrays[1:3])
    assert masks.decode_stack([], (h, w)).shape == (0, h, w)
    with pytest.raises(ValueError, match=r"rles\[0\]: got 'x', expected a COCO RLE dict"):
        masks.decode_stack(["x"], (h, w))


def test_object_masks_give_each_object_on_every_frame_with_annotated_flags():
    s = make_sample(1, task="rvos")  # a video
    h, w = s.media.size
    t = s.media.num_frames
    truth = _random_masks(t, h, w, seed=3)
    s.objects[1].masks = {f: masks.encode(truth[f]) for f in range(t) if f != 2}  # frame 2 not annotated
    m, valid = object_masks(s, [1, 2, 1])
    assert m.shape == (3, t, h, w) and valid.shape == (3, t)
    expected = truth.copy()
    expected[2] = False
    assert np.array_equal(m[0], expected) and np.array_equal(m[2], expected)
    assert valid[0].tolist() == [f != 2 for f in range(t)] and valid[1].all()
    assert np.array_equal(m[1], np.stack([masks.decode(s.objects[2].masks[f]) for f in range(t)]))
    assert used_objects(s) == sorted(set(s.seg_object_ids()) | {p.object_id for p in s.prompts} - {None})
    with pytest.raises(ValueError, match="object_ids: got 9"):
        object_masks(s, [9])


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_frames_decoded_into_place_equal_one_decode_per_frame(ext):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)
    rgb[:, :, :20] = (200, 30, 90)  # a flat half: JPEG keeps it within a few levels
    s = make_sample(1, task="rvos")
    s.media = Media("video", [encode_frame(f, ext) for f in rgb], (24, 40), ext, fps=2.0)
    got = s.decode_frames()
    assert got.shape == (3, 24, 40, 3) and got.flags["C_CONTIGUOUS"]
    assert np.array_equal(got, np.stack([decode_frame(f) for f in s.media.frames]))
    assert np.array_equal(s.decode_frames([2, 0]), got[[2, 0]])
    if ext == "png":
        assert np.array_equal(got, rgb)  # lossless: the very pixels encoded
    else:
        assert np.abs(got[:, :, :16].astype(int) - (200, 30, 90)).max() <= 4  # flat 16-px blocks: 4 levels
    # decoded straight to RGB: the very values of OpenCV's BGR decode converted afterwards (the baseline's way)
    bgr = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in s.media.frames]
    assert np.array_equal(got, np.stack([cv2.cvtColor(b, cv2.COLOR_BGR2RGB) for b in bgr]))
    assert not np.array_equal(got, np.stack(bgr))  # a channel swap would show
    shifted = Media("video", [encode_frame(np.roll(f, 1, axis=1), ext) for f in rgb], (24, 40), ext, fps=2.0)
    s.media = shifted
    assert not np.array_equal(s.decode_frames(), got)
    s.media = Media("video", [encode_frame(rgb[0], ext), encode_frame(rgb[1, :, :30], ext)], (24, 40), ext, fps=2.0)
    # refused from its header, before it is decoded
    with pytest.raises(FrameDecodeError, match=r"frames\[1\]: its header gives 24x30 \(H x W\), expected media.size"):
        s.decode_frames()
