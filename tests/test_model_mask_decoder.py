"""Our SAM 2.1 decode + propagation path against sam2's own SAM2VideoPredictor (same weights, same point)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelqa.model.mask_decoder import ARCH_CONFIGS, MaskDecoder, sam_overrides

S = 128  # micro SAM input size; frames are written at this size so both paths see the same pixels


def _write_frames(folder, t: int, seed: int = 0) -> torch.Tensor:
    """Write t smooth random JPEG frames and return them as decoded (t, 3, S, S) uint8."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(t):
        small = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((S, S), Image.BILINEAR)
        img.save(folder / f"{i:05d}.jpg", quality=95)
        out.append(np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _predictor(decoder: MaskDecoder, pred_obj_scores: bool):
    """sam2's video predictor with the decoder's weights and none of the eval-time postprocessing."""
    from sam2.build_sam import build_sam2_video_predictor

    pred = build_sam2_video_predictor(
        ARCH_CONFIGS["micro"],
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=sam_overrides("micro", S, pred_obj_scores),
        apply_postprocessing=False,
    )
    pred.load_state_dict(decoder.sam.state_dict())
    return pred.eval()


@pytest.mark.parametrize("pred_obj_scores", [False, True])
def test_point_propagation_matches_sam2_video_predictor(tmp_path, pred_obj_scores):
    torch.manual_seed(3)
    decoder = MaskDecoder("micro", S, "propagate", None, pred_obj_scores, prompt_padding="none").eval()
    if pred_obj_scores:
        # random object-score heads may call every frame empty; bias them to "present" so masks are compared
        with torch.no_grad():
            decoder.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    frames = _write_frames(tmp_path, 4)
    point = (40.0, 70.0)  # (x, y) pixels on frame 0

    pred = _predictor(decoder, pred_obj_scores)
    state = pred.init_state(video_path=str(tmp_path))
    pred.add_new_points_or_box(
        state, frame_idx=0, obj_id=1, points=np.array([point], np.float32), labels=np.array([1], np.int32)
    )
    theirs = {}
    with torch.no_grad():
        for fidx, _, video_res_masks in pred.propagate_in_video(state):
            theirs[fidx] = video_res_masks[0, 0]
    theirs_t = torch.stack([theirs[i] for i in range(4)])  # (T, H, W)

    with torch.no_grad():
        feats = decoder.encode_frames(frames)
        sparse = decoder.point_embeddings(torch.tensor([[point]]) * S / frames.shape[-1])
        dec = decoder(feats, [0, 1, 2, 3], sparse, memory_dtype=torch.bfloat16)
        ours = decoder.upsample(dec.low_res, (S, S))[0]  # (T, H, W)

    assert ours.shape == theirs_t.shape
    assert (theirs_t > 0).float().mean() > 0.001  # something is segmented: the comparison is not vacuous
    assert (theirs_t < 0).float().mean() > 0.001
    torch.testing.assert_close(ours, theirs_t, atol=1e-5, rtol=1e-4)


def test_every_frame_but_the_last_is_encoded_into_memory():
    torch.manual_seed(0)
    decoder = MaskDecoder("micro", S, "propagate", None, pred_obj_scores=False).eval()
    frames = torch.randint(0, 255, (4, 3, S, S), dtype=torch.uint8)
    calls: list[int] = []
    decoder.sam.memory_encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        feats = decoder.encode_frames(frames)
        dec = decoder(feats, [0, 1, 2, 3], torch.randn(1, 2, 256))
    # no later frame attends to the last one's memory: SAM 2's track_step encodes it anyway, we do not (the masks
    # stay SAM2VideoPredictor's, test_point_propagation_matches_sam2_video_predictor)
    assert len(calls) == 3 and dec.low_res.shape[1] == 4


def test_gradient_reaches_prompt_through_propagation():
    torch.manual_seed(0)
    decoder = MaskDecoder("micro", S, "propagate", None, pred_obj_scores=False).train()
    frames = torch.randint(0, 255, (3, 3, S, S), dtype=torch.uint8)
    sparse = torch.randn(2, 2, 256, requires_grad=True)
    dec = decoder(decoder.encode_frames(frames), [0, 1, 2], sparse)
    assert dec.low_res.shape == (2, 3, S // 4, S // 4)
    dec.low_res[:, 2].sum().backward()  # a loss on the last frame only
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0


def test_independent_mode_equals_per_frame_prompted_decode():
    torch.manual_seed(0)
    decoder = MaskDecoder("micro", S, "independent", None, pred_obj_scores=False).eval()
    frames = torch.randint(0, 255, (3, 3, S, S), dtype=torch.uint8)
    sparse = torch.randn(2, 2, 256)
    with torch.no_grad():
        feats = decoder.encode_frames(frames)
        both = decoder(feats, [0, 1, 2], sparse)
        decoder.mode = "propagate"
        for t in range(3):  # a one-frame "video" is just the prompted decode on that frame
            single = decoder(feats, [t], sparse)
            torch.testing.assert_close(both.low_res[:, t], single.low_res[:, 0], atol=1e-4, rtol=1e-4)


def test_bad_arch_and_checkpoint_raise():
    with pytest.raises(ValueError, match="mask_decoder.arch"):
        MaskDecoder("hiera_xxl")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        MaskDecoder("micro", checkpoint="/nonexistent/sam.pt")
    with pytest.raises(ValueError, match="mode"):
        MaskDecoder("micro", mode="sideways")


@pytest.mark.parametrize("train_encoder", [False, True])
def test_image_encoder_trains_only_when_asked(train_encoder):
    decoder = MaskDecoder("micro", S, "propagate", None, pred_obj_scores=False, train_image_encoder=train_encoder)
    frames = torch.randint(0, 255, (2, 3, S, S), dtype=torch.uint8)
    dec = decoder(decoder.encode_frames(frames), [0, 1], torch.randn(1, 2, 256))
    dec.raw.sum().backward()
    trunk_grad = [p.grad for p in decoder.sam.image_encoder.parameters()]
    assert all(g is not None for g in trunk_grad) == train_encoder
    assert decoder.sam.sam_mask_decoder.conv_s0.weight.grad is not None  # high-res projection always trains
    ids = {id(p) for p in decoder.trainable_parameters()}
    assert (id(decoder.sam.image_encoder.trunk.patch_embed.proj.weight) in ids) == train_encoder


def test_single_mask_switch_gives_one_candidate_per_frame():
    torch.manual_seed(0)
    frames = torch.randint(0, 255, (2, 3, S, S), dtype=torch.uint8)
    sparse = torch.randn(1, 2, 256)
    with torch.no_grad():
        many = MaskDecoder("micro", S, "propagate", None, pred_obj_scores=False).eval()
        dec = many(many.encode_frames(frames), [0, 1], sparse)
        assert dec.raw_multi.shape[2] == 3 and dec.ious_multi.shape[-1] == 3  # released: 3 candidates
        one = MaskDecoder("micro", S, "propagate", None, pred_obj_scores=False, multimask=False).eval()
        one.load_state_dict(many.state_dict())
        single = one(one.encode_frames(frames), [0, 1], sparse)
    assert single.raw_multi.shape[2] == 1 and single.ious_multi.shape[-1] == 1
    # the single-mask output is SAM's own first mask token, not one of the 3 multimask candidates
    assert not torch.allclose(single.low_res[:, 0], dec.low_res[:, 0])
