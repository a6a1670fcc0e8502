"""Collate against the tiny (real-class) Qwen2.5-VL processor: pads = grid, labels = answers, token/list consistency."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from pixelqa.batch import Batch
from pixelqa.data import masks
from pixelqa.data.collate import Collator
from pixelqa.data.synthetic import COLOURS, make_sample
from tests.tiny_processor import tiny_processor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def samples():
    return [make_sample(i, "train") for i in range(13)]  # one of each synthetic task


def _ids(processor, token: str) -> int:
    return processor.tokenizer.convert_tokens_to_ids(token)


def test_pads_match_grid_and_mm_types(processor, samples):
    b = Collator(processor)(samples)
    assert isinstance(b, Batch) and b.size == len(samples)
    img_pad, vid_pad = _ids(processor, "<|image_pad|>"), _ids(processor, "<|video_pad|>")
    n_img = n_vid = 0
    for i, s in enumerate(samples):
        ids = b.input_ids[i]
        # 112 px / patch 14 = 8 x 8 patches, merged 2 x 2 -> 16 tokens per temporal group of 2 frames
        if s.media.kind == "image":
            assert int((ids == img_pad).sum()) == 16
            assert tuple(b.image_grid_thw[n_img].tolist()) == (1, 8, 8)
            n_img += 1
        else:
            assert int((ids == vid_pad).sum()) == 16 * math.ceil(s.media.num_frames / 2)
            assert tuple(b.video_grid_thw[n_vid].tolist()) == (math.ceil(s.media.num_frames / 2), 8, 8)
            assert b.second_per_grid_ts[n_vid].item() == pytest.approx(2 / s.media.fps)
            n_vid += 1
        assert torch.equal(b.mm_token_type_ids[i] == 1, ids == img_pad)
        assert torch.equal(b.mm_token_type_ids[i] == 2, ids == vid_pad)
        assert b.frames[i].shape == (s.media.num_frames, 3, 112, 112) and b.frames[i].dtype == torch.uint8
    assert b.image_grid_thw.shape[0] == n_img and b.video_grid_thw.shape[0] == n_vid
    assert b.pixel_values.shape[0] == int(b.image_grid_thw.prod(-1).sum())
    assert b.pixel_values_videos.shape[0] == int(b.video_grid_thw.prod(-1).sum())


def test_labels_cover_exactly_the_answers(processor, samples):
    b = Collator(processor)(samples)
    tok = processor.tokenizer
    for i, s in enumerate(samples):
        lab = b.labels[i]
        expected = "".join(t.text + "<|im_end|>" for t in s.turns if t.role == "assistant")
        assert tok.decode(lab[lab != -100]) == expected
        pad = b.attention_mask[i] == 0
        assert (lab[pad] == -100).all() and (b.input_ids[i][pad] == tok.pad_token_id).all()
        assert (lab[b.mm_token_type_ids[i] > 0] == -100).all()


def test_special_token_counts_and_targets(processor, samples):
    b = Collator(processor)(samples)
    ref, mem, seg = _ids(processor, "<|ref|>"), _ids(processor, "<|mem|>"), _ids(processor, "<|seg|>")
    for i, s in enumerate(samples):
        ids = b.input_ids[i]
        assert int((ids == ref).sum()) == len(b.prompts[i]) == len(s.prompts)
        assert int((ids == mem).sum()) == len(b.memory[i])
        assert int((ids == seg).sum()) == b.seg_masks[i].shape[0] == len(b.seg_object_ids[i])
        assert b.seg_object_ids[i] == s.seg_object_ids()
        frames = b.frames[i].permute(0, 2, 3, 1).numpy()
        for k, oid in enumerate(b.seg_object_ids[i]):
            # independent truth: the synthetic frames are lossless PNG, a mask covers its shape's colour only
            colour = COLOURS[s.meta["shapes"][oid]["colour"]]
            m = b.seg_masks[i][k].numpy()
            assert m.any() and (frames[m] == colour).all()
            assert b.seg_valid[i][k].all()
        for p, sp in zip(b.prompts[i], s.prompts):
            assert p.kind == sp.type and p.frame == sp.frame and p.object_id == sp.object_id
            if p.kind == "mask":
                assert p.mask.dtype == torch.bool and p.mask.shape == (112, 112)
                assert torch.equal(p.mask, torch.from_numpy(masks.decode(sp.rle)))
            else:
                assert p.coords == pytest.approx([c / 112 for c in sp.coords])
                assert all(0 <= c <= 1 for c in p.coords)
        for m in b.memory[i]:
            assert m.mask.shape == (112, 112) and m.mask.any()


def test_memory_preamble_follows_frame_subsampling(processor):
    s = next(make_sample(i) for i in range(6, 400, 13) if make_sample(i).media.num_frames == 8)
    assert s.task == "memory_qa"
    b = Collator(processor, num_frames=4)([s])
    assert b.frames[0].shape[0] == 4
    text = processor.tokenizer.decode(b.input_ids[0])
    assert "Here is a video with 4 frames denoted as <1> to <4>." in text
    # one <|mem|> per visible frame pair (pairs start at frames 0 and 2), its mask the union over the pair
    assert sorted({m.frame for m in b.memory[0]}) == [0, 2]
    assert len(b.memory[0]) == 4 and {m.object_id for m in b.memory[0]} == {0, 1}
    assert "<1>-<2> <|mem|> <3>-<4> <|mem|>" in text
    assert all(p.frame < 4 for p in b.prompts[0])


@pytest.mark.parametrize("variant", ["ref_only", "ref_seg", "ref_seg_pool"])
def test_memory_variants(processor, samples, variant):
    s = samples[10]  # pixelqa: one prompt, pre-fill, then a memory turn over object 0
    b = Collator(processor, memory_variant=variant)([s])
    ids = b.input_ids[0]
    assert int((ids == _ids(processor, "<|mem|>")).sum()) == 0 and b.memory[0] == []
    # the memory object becomes a <|ref|> mask prompt of its own (and, with a <|seg|>, a mask target)
    assert int((ids == _ids(processor, "<|ref|>")).sum()) == len(b.prompts[0]) == 2
    n_seg = int((ids == _ids(processor, "<|seg|>")).sum())
    assert n_seg == b.seg_masks[0].shape[0] == (1 if variant == "ref_only" else 3)
    # a prompt-side <|seg|> is the token right after its <|ref|> (the paper's <REF><SEG>, chat's text): memory line
    # and question alike; ref_seg_pool finds it there
    seg = _ids(processor, "<|seg|>")
    after = {int(ids[r + 1]) for r in (ids == _ids(processor, "<|ref|>")).nonzero().flatten()}
    assert (after == {seg}) if variant != "ref_only" else (seg not in after)
    text = processor.tokenizer.decode(ids)
    assert ("[0]: <|ref|><|seg|>\n" in text) == (variant != "ref_only") and "<|ref|> <|seg|>" not in text


def test_truncate_and_drop(processor, samples, caplog):
    s = samples[10]  # pixelqa: pre-fill, then a memory turn
    full = Collator(processor)([s])
    n = int(full.attention_mask.sum())
    # cut just before the last <|mem|>: media survive, one <|mem|>, the question and the last answer do not
    cut = int(torch.nonzero(full.input_ids[0] == _ids(processor, "<|mem|>")).max())
    assert cut < n
    b = Collator(processor, max_tokens=cut)([s])
    assert b.input_ids.shape[1] == cut
    assert int((b.input_ids[0] == _ids(processor, "<|mem|>")).sum()) == len(b.memory[0]) < len(full.memory[0])
    assert b.seg_masks[0].shape[0] == 1 and (b.labels[0] != -100).any()
    with caplog.at_level(logging.WARNING):
        c = Collator(processor, max_tokens=cut, overflow="drop")
        out = c([s, samples[0]])
    assert out.keys == [samples[0].key] and c.dropped == 1 and "dropped" in caplog.text
    with pytest.raises(ValueError, match="dropped"):
        Collator(processor, max_tokens=20)([samples[1]])  # the media alone exceed the cap


def test_rejects_bad_arguments(processor):
    with pytest.raises(ValueError, match="memory_variant"):
        Collator(processor, memory_variant="magic")
    with pytest.raises(ValueError, match="overflow"):
        Collator(processor, overflow="wrap")


def test_batch_moves_to_device(processor, samples):
    b = Collator(processor)(samples[:3]).to("cpu")
    assert b.input_ids.dtype == torch.long and b.attention_mask.shape == b.labels.shape
    assert np.array_equal(b.input_ids.shape, b.mm_token_type_ids.shape)


def test_prompt_mode_redraws_points_and_boxes_from_masks(processor, samples):
    s = samples[4]  # region_caption with one prompt on object target
    np.random.seed(0)
    kinds = set()
    for _ in range(12):
        b = Collator(processor, prompt_mode="point_box")([s])
        p = b.prompts[0][0]
        kinds.add(p.kind)
        m = masks.decode(s.objects[p.object_id].masks[p.frame])
        if p.kind == "point":
            x, y = p.coords[0] * 112, p.coords[1] * 112
            assert m[int(y), int(x)]
        else:
            assert p.kind == "box" and p.mask is None and len(p.coords) == 4
    assert kinds == {"point", "box"}
    assert s.prompts[0].type == "mask"  # the input sample is left untouched
    np.random.seed(5)
    a = Collator(processor, prompt_mode="point_box")([s]).prompts[0][0].coords
    np.random.seed(5)
    assert Collator(processor, prompt_mode="point_box")([s]).prompts[0][0].coords == a  # seeded by the caller


def test_undecodable_frame_is_dropped_loudly(processor, samples, caplog):
    import copy

    bad = copy.deepcopy(samples[0])
    bad.media.frames[0] = b"\x89PNG broken"
    c = Collator(processor)
    with caplog.at_level(logging.WARNING):
        b = c([bad, samples[2]])
    assert b.keys == [samples[2].key] and c.dropped == 1 and "expected a JPEG or PNG image" in caplog.text


def test_plain_chatml_without_a_chat_template_matches_the_template(processor, samples):
    with_template = Collator(processor)(samples[:4])
    saved = processor.chat_template
    try:
        processor.chat_template = None
        plain = Collator(processor)(samples[:4])
    finally:
        processor.chat_template = saved
    assert torch.equal(plain.input_ids, with_template.input_ids) and torch.equal(plain.labels, with_template.labels)


def _class_sample(n_pairs: int):
    """An image sample in the converters' per-image group form: n independent request/<|seg|> pairs."""
    from pixelqa.data.schema import Media, ObjectTrack, Sample, Turn, encode_frame

    frame = np.zeros((112, 112, 3), np.uint8)
    objects, turns = {}, []
    for k in range(1, n_pairs + 1):
        m = np.zeros((112, 112), bool)
        m[k * 10 : k * 10 + 8, 5:50] = True
        objects[k] = ObjectTrack(masks={0: masks.encode(m)}, category=f"class {k}")
        turns += [Turn("user", f"Please segment class {k}."), Turn("assistant", "It is <|seg|>.", seg_objects=[k])]
    return Sample(
        key="img",
        source="ade20k",
        split="train",
        task="semseg",
        media=Media(kind="image", frames=[encode_frame(frame, "png")], size=(112, 112), ext="png"),
        objects=objects,
        turns=turns,
        meta={"independent_turns": True},
    )


def test_independent_pairs_are_subsampled_to_max_pairs_in_order(processor):
    sample = _class_sample(6)
    np.random.seed(3)
    b = Collator(processor, max_pairs=3)([sample])
    ids = b.seg_object_ids[0]
    assert len(ids) == 3 and ids == sorted(ids) and set(ids) <= set(range(1, 7))
    text = processor.tokenizer.decode(b.input_ids[0])
    assert [f"class {k}." in text for k in range(1, 7)] == [k in ids for k in range(1, 7)]
    assert text.count("<|image_pad|>") == 16  # the image still opens the (new) first turn
    for row, oid in enumerate(ids):  # each kept <|seg|> targets its own class mask
        assert torch.equal(b.seg_masks[0][row, 0], torch.from_numpy(masks.decode(sample.objects[oid].masks[0])))
    np.random.seed(3)
    assert Collator(processor, max_pairs=3)([sample]).seg_object_ids[0] == ids  # seeded: repeats
    assert Collator(processor, max_pairs=None)([sample]).seg_object_ids[0] == [1, 2, 3, 4, 5, 6]
    dependent = _class_sample(6)
    dependent.meta = {}
    assert len(Collator(processor, max_pairs=3)([dependent]).seg_object_ids[0]) == 6


def test_keep_all_frames_samples_are_not_subsampled(processor):
    s = next(make_sample(i) for i in range(6, 400, 13) if make_sample(i).media.num_frames == 8)
    assert Collator(processor, num_frames=4)([s]).frames[0].shape[0] == 4
    s.meta = {**s.meta, "keep_all_frames": True}  # e.g. Inst-IT: the text's <t> tags count every frame
    b = Collator(processor, num_frames=4)([s])
    assert b.frames[0].shape[0] == 8
    assert "Here is a video with 8 frames denoted as <1> to <8>." in processor.tokenizer.decode(b.input_ids[0])
