"""SAM 2.1 mask decoder (the `sam2` package): decode on the prompted frame, propagate through memory.

The prompt is a set of sparse prompt embeddings (K, n, 256) per object, e.g. the L->M tokens of a <|seg|>.
`propagate` decodes them on frame 0 (SAM 2's init-conditioning step) and tracks the objects through the
later frames with SAM 2's memory attention, all with gradients (training path). `independent` decodes
every frame from the same tokens with no memory (frames as a batch; streamed frames, `StreamedFrames`, one batch per
chunk of frames).

As released: the prompted frame's sparse prompt is SAM's two "not a point" padding tokens followed by the
<|seg|> tokens (`prompt_padding=released`); frames are resized with antialiasing; masks are gated to "no object"
(-1024) by the object score only at inference (eval mode), so training losses and memory see the raw logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCH_CONFIGS = {
    "micro": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# A 7.5 M-parameter SAM 2.1 for tests and the demo: Hiera trunk of width 32, one memory-attention layer.
MICRO_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.dim_feedforward=256",
    "++model.num_maskmem=3",
]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def sam_overrides(arch: str, image_size: int, pred_obj_scores: bool = True) -> list[str]:
    """Hydra overrides of the SAM 2.1 config for an arch, input size and object-score setting."""
    if arch not in ARCH_CONFIGS:
        raise ValueError(f"mask_decoder.arch: got {arch!r}, expected one of {sorted(ARCH_CONFIGS)}")
    if image_size % 16:
        raise ValueError(f"mask_decoder.image_size: got {image_size}, expected a multiple of 16")
    feat = image_size // 16
    overrides = list(MICRO_OVERRIDES) if arch == "micro" else []
    overrides += [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
    ]
    if not pred_obj_scores:
        overrides += ["++model.pred_obj_scores=false", "++model.pred_obj_scores_mlp=false"]
        overrides += ["++model.fixed_no_obj_ptr=false", "++model.no_obj_embed_spatial=false"]
    return overrides


def build_sam(arch: str, image_size: int, checkpoint: str | None = None, pred_obj_scores: bool = True) -> nn.Module:
    """A `sam2.modeling.sam2_base.SAM2Base` (training build, no eval-time postprocessing), on CPU."""
    import os

    from sam2.build_sam import build_sam2

    overrides = sam_overrides(arch, image_size, pred_obj_scores)
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"mask_decoder.checkpoint: {checkpoint!r} is not a local SAM 2.1 .pt file")
    return build_sam2(
        ARCH_CONFIGS[arch],
        ckpt_path=checkpoint,
        device="cpu",
        mode="train",
        hydra_overrides_extra=overrides,
        apply_postprocessing=False,
    )


@dataclass
class FrameFeatures:
    """SAM image features of a set of frames, flattened as SAM 2 expects ((HW), N, C per level)."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]

    def select(self, index: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features of frames `index` (K,), one per object: lists of (HW, K, C)."""
        feats = [x[:, index] for x in self.vision_feats]
        pos = [x[:, index] for x in self.vision_pos]
        return feats, pos


class StreamedFrames:
    """SAM image features of a long clip, encoded on demand `chunk` frames at a time (one chunk kept).

    Stands in for `FrameFeatures` in `MaskDecoder.forward` when every object walks the clip's frames in order
    (inference): a 10-minute video never has all its frames encoded, or on the device, at once. A `store` dict
    (kept by a conversation for these same frames) keeps every chunk's features for the next decode of the
    conversation, for clips of at most `store_frames` frames; longer clips stream.
    """

    def __init__(
        self,
        decoder: MaskDecoder,
        frames: torch.Tensor,
        chunk: int = 16,
        store: dict | None = None,
        store_frames: int = 64,
    ):
        self.decoder, self.frames, self.chunk = decoder, frames, chunk
        self.store = store if store is not None and frames.shape[0] <= store_frames else None
        self.start, self.features = -1, None
        self.feat_sizes = self.chunk_features(0).feat_sizes

    def chunk_features(self, first: int) -> FrameFeatures:
        """The features of the chunk starting at `first` (a multiple of `chunk`), encoded if not held."""
        if first != self.start:
            key = (first, self.chunk)
            held = self.store.get(key) if self.store is not None else None
            if held is None:
                device = self.decoder.mean.device
                held = self.decoder.encode_frames(self.frames[first : first + self.chunk].to(device))
                if self.store is not None:
                    self.store[key] = held
            self.features, self.start = held, first
        return self.features

    def select(self, index: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features of frames `index` (K,) (all in one chunk): lists of (HW, K, C)."""
        first = int(index.min()) // self.chunk * self.chunk
        if int(index.max()) >= first + self.chunk:
            raise ValueError(f"frame_ids: frames {index.tolist()} span two chunks of {self.chunk}; expected one")
        return self.chunk_features(first).select(index - first)


@dataclass
class DecodedMasks:
    """Decoder outputs for K objects over T frames."""

    low_res: torch.Tensor  # (K, T, h, w) mask logits at image_size / 4 (-1024 where judged object-free)
    raw: torch.Tensor  # (K, T, h, w) the same logits before the object-score gating (for mask losses)
    ious: torch.Tensor  # (K, T) predicted IoU of the selected mask
    object_scores: torch.Tensor  # (K, T) objectness logits
    raw_multi: torch.Tensor | None = None  # (K, T, M, h, w) every candidate's raw logits (M = 3 multimask)
    ious_multi: torch.Tensor | None = None  # (K, T, M) every candidate's predicted IoU


class MaskDecoder(nn.Module):
    """SAM 2.1 wrapped for prompt-embedding decoding and memory propagation."""

    def __init__(
        self,
        arch: str = "micro",
        image_size: int = 128,
        mode: str = "propagate",
        checkpoint: str | None = None,
        pred_obj_scores: bool = True,
        train_image_encoder: bool = False,
        prompt_padding: str = "released",
        antialias: bool = True,
        multimask: bool = True,
    ):
        super().__init__()
        self.train_image_encoder = train_image_encoder
        if mode not in ("propagate", "independent"):
            raise ValueError(f"mask_decoder.mode: got {mode!r}, expected 'propagate' or 'independent'")
        if prompt_padding not in ("released", "none"):
            raise ValueError(f"mask_decoder.prompt_padding: got {prompt_padding!r}, expected 'released' or 'none'")
        self.mode, self.image_size = mode, image_size
        self.prompt_padding, self.antialias, self.multimask = prompt_padding, antialias, multimask
        self.sam = build_sam(arch, image_size, checkpoint, pred_obj_scores)
        if not train_image_encoder:
            self.sam.image_encoder.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def prompt_width(self) -> int:
        """Width of SAM's prompt tokens (256)."""
        return self.sam.sam_prompt_embed_dim

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, S, S) normalised float, S = image_size."""
        x = frames.float() / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
        return (x - self.mean) / self.std

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that training updates (all of SAM but the image encoder, unless that is trained too)."""
        frozen = set() if self.train_image_encoder else {id(p) for p in self.sam.image_encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def encode_frames(self, frames: torch.Tensor) -> FrameFeatures:
        """(N, 3, H, W) uint8 frames -> SAM image features of all N frames.

        Without `train_image_encoder` the Hiera trunk + FPN neck run under no_grad (the paper fine-tunes the
        mask decoder; this also saves most of SAM's activation memory). The conv_s0/conv_s1 projections of the
        high-resolution features belong to the mask decoder and keep their gradients.
        """
        if self.train_image_encoder:
            backbone_out = self.sam.image_encoder(self.preprocess(frames))
        else:
            with torch.no_grad():
                backbone_out = self.sam.image_encoder(self.preprocess(frames))
        if self.sam.use_high_res_features_in_sam:
            # as SAM2Base.forward_image: project levels 0 and 1 once for the mask decoder
            fpn = list(backbone_out["backbone_fpn"])
            fpn[0] = self.sam.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam.sam_mask_decoder.conv_s1(fpn[1])
            backbone_out = dict(backbone_out, backbone_fpn=fpn)
        _, feats, pos, sizes = self.sam._prepare_backbone_features(backbone_out)
        return FrameFeatures(feats, pos, sizes)

    def point_embeddings(self, points: torch.Tensor) -> torch.Tensor:
        """SAM's own prompt encoder on positive points (K, P, 2) in SAM input pixels -> (K, P+1, 256)."""
        labels = torch.ones(points.shape[:2], dtype=torch.int32, device=points.device)
        sparse, _ = self.sam.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
        return sparse

    def _heads(
        self, pix_feat: torch.Tensor, sparse: torch.Tensor, high_res: list[torch.Tensor] | None, multimask: bool
    ) -> tuple[torch.Tensor, ...]:
        """SAM 2's `_forward_sam_heads` with given sparse prompt embeddings (and no mask prompt).

        Returns the selected low/high-res logits, IoU, object pointer, object score and raw logits, then every
        candidate's raw logits (K, M, h, w) and IoUs (K, M).
        """
        sam = self.sam
        B = pix_feat.shape[0]
        h, w = sam.sam_prompt_encoder.image_embedding_size
        dense = sam.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(B, -1, h, w)
        low_multi, ious, tokens, obj_logits = sam.sam_mask_decoder(
            image_embeddings=pix_feat,
            image_pe=sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse.to(pix_feat.dtype),
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res,
        )
        raw_multi = low_multi.float()
        if sam.pred_obj_scores and not self.training:
            # as the released inference: a frame judged object-free outputs the "no object" score everywhere
            low_multi = torch.where(obj_logits[:, :, None, None] > 0, low_multi, -1024.0)
        low_multi = low_multi.float()
        # all candidates, then the selected one, as SAM 2 does: upsampling the selected one alone rounds differently
        # (up to 5e-7: ATen vectorises 1 and 3 channels apart), which over the demo's 500 steps moved its figures
        high_multi = F.interpolate(
            low_multi, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False
        )
        token = tokens[:, 0]
        all_ious = ious
        if multimask:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(B, device=pix_feat.device)
            low, high = low_multi[rows, best].unsqueeze(1), high_multi[rows, best].unsqueeze(1)
            raw = raw_multi[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
            ious = ious[rows, best].unsqueeze(1)
        else:
            low, high, raw = low_multi, high_multi, raw_multi
        obj_ptr = sam.obj_ptr_proj(token)
        if sam.pred_obj_scores:
            appear = obj_logits.sigmoid() if sam.soft_no_obj_ptr else (obj_logits > 0).float()
            if sam.fixed_no_obj_ptr:
                obj_ptr = appear * obj_ptr
            obj_ptr = obj_ptr + (1 - appear) * sam.no_obj_ptr
        return low, high, ious, obj_ptr, obj_logits, raw, raw_multi, all_ious

    def _prompted_step(
        self,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        sparse: torch.Tensor,
        output_dict: dict,
        num_frames: int,
        frame_idx: int,
        run_mem_encoder: bool,
    ) -> dict:
        """SAM 2's `track_step` on an init-conditioning frame, prompted by sparse embeddings (K, n, 256)."""
        sam = self.sam
        K = sparse.shape[0]
        high_res = [x.permute(1, 2, 0).view(K, x.shape[2], *s) for x, s in zip(feats[:-1], sizes[:-1])] or None
        pix_feat = sam._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=True,
            current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:],
            feat_sizes=sizes[-1:],
            output_dict=output_dict,
            num_frames=num_frames,
        )  # (K, C, h, w)
        multimask = sam._use_multimask(True, None) and self.multimask
        if self.prompt_padding == "released":
            sparse = torch.cat([self._padding_tokens(K, pix_feat.device).to(sparse.dtype), sparse], dim=1)
        low, high, ious, obj_ptr, obj_logits, raw, raw_multi, all_ious = self._heads(
            pix_feat, sparse, high_res, multimask
        )
        out = {"point_inputs": None, "mask_inputs": None, "pred_masks": low, "pred_masks_high_res": high}
        out.update(obj_ptr=obj_ptr, object_score_logits=obj_logits, ious=ious, raw_masks=raw)
        out["raw_multi"], out["ious_multi"] = raw_multi, all_ious
        sam._encode_memory_in_output(feats, sizes, None, run_mem_encoder, high, obj_logits, out)
        return out

    def forward(
        self,
        features: FrameFeatures | StreamedFrames,
        frame_ids: list[int] | torch.Tensor,
        sparse: torch.Tensor,
        memory_dtype: torch.dtype | None = None,
        on_frame: Callable[[int, int], None] | None = None,
    ) -> DecodedMasks:
        """Decode K objects over T frames; objects of several videos of equal length decode as one batch.

        frame_ids: indices into `features` in time order, a list shared by all objects or (K, T) per object.
        sparse: (K, n, 256) prompt embeddings applied on each object's first frame (`independent`: on every frame).
        `memory_dtype` rounds the stored memory features (SAM2VideoPredictor keeps them in bfloat16; used by
        equivalence tests). `on_frame(done, total)` is called after each frame (a progress bar on long videos).
        """
        K = sparse.shape[0]
        index = torch.as_tensor(frame_ids, device=sparse.device)
        if index.dim() == 1:
            index = index[None].expand(K, -1)  # (T,) -> (K, T)
        if index.shape[0] != K:
            raise ValueError(f"frame_ids: got {tuple(index.shape)}, expected ({K}, T) or (T,)")
        T = index.shape[1]
        if self.mode == "independent":
            return self._independent(features, index, sparse, on_frame)
        output_dict: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        lows, raws, ious, scores, multis, multi_ious = [], [], [], [], [], []
        # SAM 2 attends to the last num_maskmem memories and max_obj_ptrs_in_encoder object pointers only: at
        # inference older per-frame outputs are dropped, so memory stays bounded on long clips
        keep = max(self.sam.num_maskmem, self.sam.max_obj_ptrs_in_encoder) + 1
        for t in range(T):
            feats, pos = features.select(index[:, t])
            if t == 0:
                out = self._prompted_step(feats, pos, features.feat_sizes, sparse, output_dict, T, 0, T > 1)
                iou = out["ious"][:, 0]
            else:
                # the last frame's memory is never read (no later frame attends to it): not encoded
                out = self._tracked_step(feats, pos, features.feat_sizes, output_dict, T, t, t < T - 1)
                iou = out["ious"][:, 0]
            if memory_dtype is not None and out.get("maskmem_features") is not None:
                out["maskmem_features"] = out["maskmem_features"].to(memory_dtype).float()
            key = "cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"
            output_dict[key][t] = out
            if not torch.is_grad_enabled() and t - keep > 0:
                output_dict["non_cond_frame_outputs"].pop(t - keep, None)
            lows.append(out["pred_masks"][:, 0])
            raws.append(out["raw_masks"][:, 0])
            ious.append(iou)
            scores.append(out["object_score_logits"][:, 0])
            multis.append(out["raw_multi"])
            multi_ious.append(out["ious_multi"])
            if on_frame is not None:
                on_frame(t + 1, T)
        return DecodedMasks(
            torch.stack(lows, 1),
            torch.stack(raws, 1),
            torch.stack(ious, 1),
            torch.stack(scores, 1),
            torch.stack(multis, 1),
            torch.stack(multi_ious, 1),
        )

    def _tracked_step(
        self,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        output_dict: dict,
        num_frames: int,
        frame_idx: int,
        run_mem_encoder: bool = True,
    ) -> dict:
        """SAM 2's `track_step` on a later frame (memory-conditioned, no prompt), keeping the IoU estimate."""
        sam = self.sam
        K = feats[-1].shape[1]
        high_res = [x.permute(1, 2, 0).view(K, x.shape[2], *s) for x, s in zip(feats[:-1], sizes[:-1])] or None
        pix_feat = sam._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=False,
            current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:],
            feat_sizes=sizes[-1:],
            output_dict=output_dict,
            num_frames=num_frames,
        )
        multimask = sam._use_multimask(False, None) and self.multimask
        sparse = self._padding_tokens(K, pix_feat.device)  # no prompt on tracked frames, as in track_step
        low, high, ious, obj_ptr, obj_logits, raw, raw_multi, all_ious = self._heads(
            pix_feat, sparse, high_res, multimask
        )
        out = {"point_inputs": None, "mask_inputs": None, "pred_masks": low, "pred_masks_high_res": high}
        out.update(obj_ptr=obj_ptr, object_score_logits=obj_logits, ious=ious, raw_masks=raw)
        out["raw_multi"], out["ious_multi"] = raw_multi, all_ious
        sam._encode_memory_in_output(feats, sizes, None, run_mem_encoder, high, obj_logits, out)
        return out

    @torch.no_grad()
    def frame_scores(self, features: FrameFeatures, sparse: torch.Tensor) -> torch.Tensor:
        """How well each frame supports each prompt on its own: (K, T) = sigmoid(object score) x predicted IoU,
        every frame decoded from the prompt alone (no memory)."""
        K, T = sparse.shape[0], features.vision_feats[0].shape[1]
        index = torch.arange(T, device=sparse.device)[None].expand(K, -1)
        dec = self._independent(features, index, sparse)
        score = dec.object_scores.sigmoid() if self.sam.pred_obj_scores else torch.ones_like(dec.ious)
        return score * dec.ious

    def _padding_tokens(self, K: int, device: torch.device) -> torch.Tensor:
        """SAM's sparse tokens for "no point": its padding point plus the encoder's own pad, (K, 2, 256)."""
        sparse, _ = self.sam.sam_prompt_encoder(
            points=(torch.zeros(K, 1, 2, device=device), -torch.ones(K, 1, dtype=torch.int32, device=device)),
            boxes=None,
            masks=None,
        )
        return sparse

    def _independent(
        self,
        features: FrameFeatures | StreamedFrames,
        index: torch.Tensor,
        sparse: torch.Tensor,
        on_frame: Callable[[int, int], None] | None = None,
    ) -> DecodedMasks:
        """Every frame decoded from the same prompt, no memory: frames x objects as one batch, or with streamed
        features (`StreamedFrames`, inference) one batch per chunk of frames, chunks in order, so that no more than
        one chunk's features are held. `on_frame(done, T)` is called as each time step is complete."""
        K, T = index.shape
        idx = index.t().reshape(-1)  # (K, T) -> (T*K,) frame-major
        sparse_tk = sparse.repeat(T, 1, 1)  # (T*K, n, 256)
        if isinstance(features, StreamedFrames):
            chunk_of = idx // features.chunk
            groups = [(chunk_of == c).nonzero().flatten() for c in torch.unique(chunk_of).tolist()]
        else:
            groups = [torch.arange(T * K, device=idx.device)]
        parts: list[dict] = []
        done = torch.zeros(T * K, dtype=torch.bool)
        reported = 0
        for pairs in groups:
            feats, pos = features.select(idx[pairs])
            parts.append(self._prompted_step(feats, pos, features.feat_sizes, sparse_tk[pairs], {}, 1, 0, False))
            if on_frame is not None:
                done[pairs.cpu()] = True
                complete = int(done.view(T, K).all(1).sum())
                for step in range(reported + 1, complete + 1):
                    on_frame(step, T)
                reported = complete

        def gather(key: str) -> torch.Tensor:
            """(T*K, ...) output `key` of every pair, in frame-major order."""
            if len(parts) == 1:
                return parts[0][key]
            order = torch.cat(groups).to(parts[0][key].device)
            return torch.cat([p[key] for p in parts])[torch.argsort(order)]

        low, raw, ious = gather("pred_masks"), gather("raw_masks"), gather("ious")
        scores, multi, multi_ious = gather("object_score_logits"), gather("raw_multi"), gather("ious_multi")
        return DecodedMasks(
            low[:, 0].view(T, K, *low.shape[-2:]).transpose(0, 1),
            raw[:, 0].view(T, K, *raw.shape[-2:]).transpose(0, 1),
            ious[:, 0].view(T, K).transpose(0, 1),
            scores[:, 0].view(T, K).transpose(0, 1),
            multi.view(T, K, *multi.shape[1:]).transpose(0, 1),
            multi_ious.view(T, K, -1).transpose(0, 1),
        )

    def upsample(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(..., h, w) low-res logits -> (..., H, W) at a frame's source size (as SAM2VideoPredictor does)."""
        lead = low_res.shape[:-2]
        x = low_res.reshape(-1, 1, *low_res.shape[-2:])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.view(*lead, *size)
