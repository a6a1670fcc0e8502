"""Backbone: plain-Qwen equivalence, visual feature layout, tiny preset determinism, LoRA targets, path errors."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import cached_model, frames, make_batch, rect
from transformers import Qwen2_5_VLForConditionalGeneration

from pixelqa.model import backbone as bb
from pixelqa.model.prompt_encoder import masked_pool
from pixelqa.prompt_format import SPECIAL_TOKENS


def _plain_copy(model) -> Qwen2_5_VLForConditionalGeneration:
    """A separate plain Qwen2.5-VL with the same weights as the model's backbone."""
    qwen = model.qwen
    plain = Qwen2_5_VLForConditionalGeneration(qwen.config)
    plain.load_state_dict(qwen.state_dict())
    return plain.eval()


@pytest.mark.parametrize("kind", ["image", "video"])
def test_logits_equal_plain_qwen_without_special_tokens(kind):
    model = cached_model().eval()
    t = 1 if kind == "image" else 4
    samples = [
        {
            "frames": frames(t, seed=1),
            "kind": kind,
            "user": "Describe the object.",
            "answer": "A red circle moves left.",
        },
        {"frames": frames(t, 84, 140, seed=2), "kind": kind, "user": "What is it?", "answer": "A dog."},
    ]
    batch = make_batch(model.processor, samples)
    with torch.no_grad():
        ours = model(batch).logits
        theirs = _plain_copy(model)(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=batch.mm_token_type_ids,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
            pixel_values_videos=batch.pixel_values_videos,
            video_grid_thw=batch.video_grid_thw,
            second_per_grid_ts=batch.second_per_grid_ts,
        ).logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_premerge_features_are_raster_ordered_and_merge_to_qwen_features():
    """Pooling sees tokens in raster order: the merger applied to them gives Qwen's own (un-windowed) output,
    and with the ViT blocks reduced to identity a change in one 28x28 cell moves exactly that token."""
    model = cached_model()
    qwen = bb.build_qwen("tiny", None, 0, "float32", model.tokenizer)
    visual = qwen.model.visual.eval()
    with torch.no_grad():
        for blk in visual.blocks:  # residual-only blocks: token i depends on its own 2x2 patches only
            blk.attn.proj.weight.zero_(), blk.attn.proj.bias.zero_()
            blk.mlp.down_proj.weight.zero_(), blk.mlp.down_proj.bias.zero_()
    model_qwen = model.qwen
    img = frames(1, 224, 168, seed=3)[0]  # 16 x 12 patches -> 8 x 6 tokens, several attention windows
    img2 = img.clone()
    r, c = 5, 4  # token cell (row, col)
    img2[:, r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28] = 255 - img2[:, r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28]
    proc = model.processor.image_processor
    proc_kw = {"size": {"shortest_edge": 56 * 56, "longest_edge": 224 * 168}}
    enc1 = proc(images=[img], return_tensors="pt", **proc_kw)
    enc2 = proc(images=[img2], return_tensors="pt", **proc_kw)
    assert enc1["image_grid_thw"].tolist() == [[1, 16, 12]]
    model.qwen.model.visual, saved = visual, model_qwen.model.visual
    try:
        with torch.no_grad():
            out1, (pre1, _) = model._encode_visual(enc1["pixel_values"], enc1["image_grid_thw"])
            _, (pre2, _) = model._encode_visual(enc2["pixel_values"], enc2["image_grid_thw"])
            torch.testing.assert_close(visual.merger.mlp(pre1[0]), out1.pooler_output[0], atol=1e-5, rtol=1e-5)
    finally:
        model.qwen.model.visual = saved
    changed = ((pre1[0] - pre2[0]).abs().sum(-1) > 1e-4).nonzero().flatten().tolist()
    assert changed == [r * 6 + c]
    # and masked pooling over that single cell returns exactly that token
    grid = pre1[0]
    mask = rect(224, 168, r * 28, (r + 1) * 28, c * 28, (c + 1) * 28)
    torch.testing.assert_close(masked_pool(grid, mask, (8, 6)), grid[r * 6 + c])


def test_video_frames_map_to_temporal_grid_steps():
    model = cached_model()
    vid = frames(4, seed=4)
    batch = make_batch(model.processor, [{"frames": vid, "kind": "video", "user": "Hi", "answer": "Ok"}])
    from pixelqa.model.unipixel import _split_media

    media = _split_media(batch, model.merge_unit)
    with torch.no_grad():
        _, pre = model._encode_visual(batch.pixel_values_videos, batch.video_grid_thw)
    grids = model._sample_frames(batch, media, {"video": pre})
    assert len(grids) == 1 and len(grids[0]) == 4
    steps = pre[0][0].view(2, 16, -1)
    for t in range(4):  # temporal_patch_size 2: frames (0, 1) -> step 0, (2, 3) -> step 1
        assert grids[0][t].grid_hw == (4, 4)
        torch.testing.assert_close(grids[0][t].features, steps[t // 2])
        # each step's window order is a permutation of its own 16 cells (local, not global, indices)
        assert sorted(grids[0][t].window_index.tolist()) == list(range(16))


def test_tiny_preset_is_deterministic_and_has_special_tokens():
    p1, p2 = bb.build_processor("tiny"), bb.build_processor("tiny")
    assert p1.tokenizer.get_vocab() == p2.tokenizer.get_vocab()
    ids = bb.add_special_tokens(p1)
    assert set(ids) == set(SPECIAL_TOKENS)
    for tok in SPECIAL_TOKENS:  # kept whole
        assert p1.tokenizer(f"a {tok} b")["input_ids"].count(ids[tok]) == 1
    q1 = bb.build_qwen("tiny", None, 7, "float32", p1.tokenizer)
    q2 = bb.build_qwen("tiny", None, 7, "float32", p1.tokenizer)
    q3 = bb.build_qwen("tiny", None, 8, "float32", p1.tokenizer)
    s1, s2, s3 = q1.state_dict(), q2.state_dict(), q3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    n = sum(p.numel() for p in q1.parameters())
    assert 100_000 < n < 1_000_000
    img = frames(1, 112, 112)[0]
    enc = p1.image_processor(images=[img], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]  # 4 x 4 merged tokens


def test_lora_targets_vit_and_llm_attention_only():
    model = cached_model(lora=True)
    names = {n for n, _ in model.backbone.named_modules() if n.endswith("lora_A")}
    assert any(".visual.blocks.0.attn.qkv." in n for n in names)
    assert any(".visual.blocks.1.attn.proj." in n for n in names)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert any(f"self_attn.{proj}." in n for n in names)
    assert not any("mlp" in n or "merger" in n or "lm_head" in n for n in names)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_real_presets_require_a_local_path(tmp_path):
    with pytest.raises(ValueError, match="path"):
        bb.build_processor("unipixel-3b", None)
    with pytest.raises(FileNotFoundError, match="config.json"):
        bb.build_processor("unipixel-7b", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="preset"):
        bb.build_processor("gpt-5", None)


def test_config_only_directory_builds_random_init_real_path(tmp_path):
    """A real preset whose directory holds only config.json: random init, tiny tokenizer, remapped media ids."""
    from model_fixtures import make_batch
    from transformers import Qwen2_5_VLConfig

    from pixelqa.model import UniPixel
    from pixelqa.model.config import UniPixelConfig

    cfg = bb.tiny_qwen_config(bb.build_tiny_tokenizer())
    cfg.text_config.vocab_size = 1000  # unlike the tokenizer's: ids must come from the tokenizer
    cfg.image_token_id, cfg.video_token_id = 990, 991
    Qwen2_5_VLConfig.save_pretrained(cfg, tmp_path)
    model = UniPixel(UniPixelConfig(preset="unipixel-3b", path=str(tmp_path))).eval()
    assert model.qwen.config.video_token_id == model.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert model.qwen.get_input_embeddings().weight.shape[0] == 1000
    assert model.processor.image_processor.size["longest_edge"] == bb.QWEN_MAX_PIXELS
    batch = make_batch(
        model.processor, [{"frames": frames(2, 56, 56), "kind": "video", "user": "Hi", "answer": "[1] <|seg|>"}]
    )
    with torch.no_grad():
        out = model(batch)
    assert out.pred_masks[0].shape == (1, 2, 56, 56)
