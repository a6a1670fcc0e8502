"""UniPixel: Qwen2.5-VL + visual prompt tokens + SAM 2.1 mask decoding + an object memory bank.

Token handling in `forward` (one pass, teacher-forced; a second LLM pass for memory.variant=ref_seg_pool), as the
released model computes it (`docs/departures.md` lists the switches that depart from it):
- <|ref|>: replaced by its visual prompt's token (the released SAM-style encoder for points/boxes; masked pooling
  + M->L for masks);
- <|mem|>: one per object and frame pair, replaced by M->L of the merger input pooled under the pair's binary cell
  mask (in Qwen's window order, as released; `memory.pooling=raster` pools the right cells);
- <|seg|>: the pre-final-norm state of the position *before* it -> `seg_head` (L->M) -> `hidden_tokens` SAM prompt
  tokens, decoded on the sample's first frame and propagated to the others by SAM 2's memory.
The new token rows (input embedding and LM-head row of the three tokens) are our own parameters, so the base Qwen
weights can stay frozen (only LoRA adapts them); a released checkpoint's rows are copied into them on load and
written back on export.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from operator import attrgetter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixelqa.batch import Batch
from pixelqa.files import atomic_folder, replaceable_folder
from pixelqa.model import backbone as bb
from pixelqa.model.chat import ChatResult, ChatState, chat_turn
from pixelqa.model.config import UniPixelConfig
from pixelqa.model.losses import IGNORE_INDEX, lm_loss, mask_losses, released_mask_losses
from pixelqa.model.mask_decoder import DecodedMasks, MaskDecoder, StreamedFrames
from pixelqa.model.memory import check_variant
from pixelqa.model.projectors import LanguageToMask, MaskToLanguage
from pixelqa.model.prompt_encoder import RefPromptEncoder, SparsePromptEncoder, masked_pool
from pixelqa.prompt_format import MEM, REF, SEG
from pixelqa.switches import SWITCH_CHOICES

WEIGHTS_FILE = "unipixel.pt"
CONFIG_FILE = "unipixel_config.json"


@dataclass
class UniPixelOutput:
    """Outputs of one forward pass."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]  # lm, focal, dice, iou, objectness (unweighted)
    logits: (
        torch.Tensor | None
    )  # (B, L, V); None in training mode with labels (the LM loss is taken at labelled positions)
    pred_masks: list[torch.Tensor]  # per sample (K, T, H, W) mask logits at source resolution
    pred_ious: list[torch.Tensor]  # per sample (K, T)
    object_scores: list[torch.Tensor]  # per sample (K, T) objectness logits
    # un-normalised parts, so a trainer can normalise over a whole global batch (micro-batches x ranks):
    # sums["lm"] = summed token CE over `counts["lm_tokens"]` tokens; sums[focal|dice|iou|objectness] = summed
    # per-sample mask losses over `counts["mask_samples"]` samples with masks (released mode)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class FrameGrid:
    """Pre-merger visual features of one frame: (h*w, 4*vit_width) in raster order of its (h, w) token grid.

    window_index[i] is the raster cell of the i-th row of the merger input in Qwen's window order.
    """

    features: torch.Tensor
    grid_hw: tuple[int, int]
    window_index: torch.Tensor | None = None


def check_choices(cfg: UniPixelConfig) -> None:
    """Raise on a closed-choice config value outside its choices (recipes are checked earlier, pixelqa.config)."""
    for key, choices in SWITCH_CHOICES.items():
        value = attrgetter(key)(cfg)
        if value not in choices:
            raise ValueError(f"model.{key}: got {value!r}, expected one of {choices}")


def cell_mask(mask: torch.Tensor, grid_hw: tuple[int, int], patch: int = 14) -> torch.Tensor:
    """(H, W) mask -> (h, w) bool cells of the merged token grid, as the release pools memory masks.

    The mask is resized (bilinear, antialiased) to the processor's frame size (2h * patch, 2w * patch) and
    max-pooled over each merged cell (2 * patch px); a cell counts if any of it is covered.
    """
    h, w = grid_hw
    x = mask.float()[None, None]
    x = F.interpolate(x, size=(2 * h * patch, 2 * w * patch), mode="bilinear", align_corners=False, antialias=True)
    return F.max_pool2d(x, kernel_size=2 * patch)[0, 0] > 0


def _split_media(batch: Batch, merge_unit: int) -> list[list[tuple[str, int]]]:
    """Per sample, the (kind, index) of the image / video entries its visual tokens belong to, in order."""
    out: list[list[tuple[str, int]]] = []
    cursor = {"image": 0, "video": 0}
    grids = {"image": batch.image_grid_thw, "video": batch.video_grid_thw}
    for b in range(batch.size):
        items = []
        for kind, code in (("image", 1), ("video", 2)):
            need = int((batch.mm_token_type_ids[b] == code).sum())
            while need > 0:
                g = grids[kind]
                if g is None or cursor[kind] >= g.shape[0]:
                    raise ValueError(f"sample {b}: {need} {kind} tokens left but no {kind}_grid_thw entry for them")
                n = int(g[cursor[kind]].prod()) // merge_unit
                items.append((kind, cursor[kind]))
                cursor[kind] += 1
                need -= n
            if need < 0:
                raise ValueError(f"sample {b}: {kind} token count does not match {kind}_grid_thw")
        out.append(items)
    return out


def _process_rank() -> int:
    """This process's rank in torch.distributed (0 when it is not initialised)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def draw_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the released loss's object draw at a training step on a rank; distinct for every (step, rank)."""
    # steps stay far below the rank stride, so no two (step, rank) pairs of a run share a seed
    return seed * 1_000_003 + step + rank * 1_000_000_007


class UniPixel(nn.Module):
    """The UniPixel network. Submodules: backbone, sparse_prompt_encoder, m2l, l2m, mask_decoder."""

    def __init__(self, cfg: UniPixelConfig, random_init: bool = False):
        super().__init__()
        from pixelqa.model import release

        self.cfg = cfg
        self.kept_backbone_keys: set[str] = set()  # loaded backbone weights that differ from the base
        check_variant(cfg.memory.variant)
        check_choices(cfg)
        folder = release.inspect_folder(cfg.preset, cfg.path)  # kind of cfg.path: release | base | None
        self.source = folder
        if folder is not None and folder.kind == "release":
            release.apply_release_config(cfg, folder)  # SAM arch / size and hidden tokens come from the release
        self.processor = bb.build_processor(cfg.preset, cfg.path, folder)
        self.tokenizer = self.processor.tokenizer
        self.token_ids = bb.add_special_tokens(self.processor)  # {REF: id, MEM: id, SEG: id}
        if folder is not None and folder.kind == "release":
            release.check_token_ids(folder, self.token_ids)
        qwen = bb.build_qwen(cfg.preset, cfg.path, cfg.seed, cfg.dtype, self.tokenizer, random_init, folder, cfg.tiny)
        bb.resize_for_tokens(qwen, self.tokenizer, cfg.seed)
        qwen.requires_grad_(False)
        qcfg = qwen.config
        llm_width = qcfg.text_config.hidden_size
        vit = qcfg.vision_config
        self.merge_unit = vit.spatial_merge_size**2
        self.patch_size = vit.patch_size
        new_ids = torch.tensor([self.token_ids[t] for t in (REF, MEM, SEG)])
        self.register_buffer("new_ids", new_ids, persistent=False)
        self.register_buffer("mask_draws", torch.zeros((), dtype=torch.long))  # training steps that drew objects
        self.new_token_embed = nn.Parameter(qwen.get_input_embeddings().weight[new_ids].detach().float().clone())
        self.new_token_head = nn.Parameter(qwen.get_output_embeddings().weight[new_ids].detach().float().clone())
        with bb.fork_rng(cfg.seed + 1):
            md = cfg.mask_decoder
            self.mask_decoder = MaskDecoder(
                md.arch,
                md.image_size,
                md.mode,
                md.checkpoint,
                md.pred_obj_scores,
                md.train_image_encoder,
                md.prompt_padding,
                md.antialias,
                md.multimask,
            )
            pe = cfg.prompt_encoder
            sam_prompts = self.mask_decoder.sam.sam_prompt_encoder
            if pe.kind == "released":
                self.sparse_prompt_encoder = RefPromptEncoder(llm_width, md.image_size, pe.hidden, pe.temporal)
                self.sparse_prompt_encoder.init_as_released(sam_prompts)
            else:
                self.sparse_prompt_encoder = SparsePromptEncoder(llm_width, pe.hidden, pe.temporal, pe.max_frames)
                self.sparse_prompt_encoder.init_from_sam(sam_prompts)
            self.m2l = MaskToLanguage(vit.hidden_size * self.merge_unit, llm_width)
            self.m2l.init_from_merger(qwen.model.visual.merger.mlp)
            released_head = cfg.seg_head == "released"
            eps = getattr(qcfg.text_config, "rms_norm_eps", 1e-6)
            self.l2m = LanguageToMask(llm_width, cfg.hidden_tokens, self.mask_decoder.prompt_width, released_head, eps)
            if released_head:
                self.l2m.init_as_released()
        if cfg.lora.enabled:
            lc = cfg.lora
            with bb.fork_rng(cfg.seed + 2):
                qwen = bb.apply_lora(qwen, lc.rank, lc.alpha, lc.dropout, lc.vit, lc.llm)
        self.backbone = qwen
        if folder is not None and folder.kind == "release":
            release.load_release_modules(self, folder)  # seg_head, msk_proj, ref_*, tem_*, sam2
        if cfg.gradient_checkpointing:
            self.qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def qwen(self) -> nn.Module:
        """The `Qwen2_5_VLForConditionalGeneration` (peft wrapper removed; LoRA layers stay in place)."""
        return bb.unwrap_qwen(self.backbone)

    @property
    def llm_dtype(self) -> torch.dtype:
        """Dtype of the Qwen weights."""
        return self.qwen.get_input_embeddings().weight.dtype

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameter groups by role (LoRA, new token rows, prompt encoder parts, projectors, SAM)."""
        lora = [p for n, p in self.backbone.named_parameters() if "lora_" in n]
        qwen = self.qwen
        embeddings = [qwen.get_input_embeddings().weight]
        if qwen.get_output_embeddings().weight is not embeddings[0]:
            embeddings.append(qwen.get_output_embeddings().weight)
        sam_encoder = list(self.mask_decoder.sam.image_encoder.parameters())
        in_sam_encoder = {id(p) for p in sam_encoder}
        # The release trains the <|ref|> encoder in two parts (tuning flags `ref` and `ref_enc`): its projections and
        # temporal embedding from stage 1 on, the copy of SAM's prompt encoder in stage 3 only. The fourier encoder
        # (ours) has no SAM copy: all of it is `sparse_prompt_encoder`.
        pe = self.sparse_prompt_encoder
        ref_encoder = list(pe.ref_encoder.parameters()) if isinstance(pe, RefPromptEncoder) else []
        in_ref_encoder = {id(p) for p in ref_encoder}
        return {
            "backbone_lora": lora,
            "embeddings": embeddings,  # the full embedding and LM-head matrices (the release trains them in stage 3)
            "mask_decoder_image_encoder": sam_encoder,
            "new_token_rows": [self.new_token_embed, self.new_token_head],
            "sparse_prompt_encoder": [p for p in pe.parameters() if id(p) not in in_ref_encoder],  # ref_proj*, tem_*
            "ref_encoder": ref_encoder,  # the SAM prompt-encoder copy
            "m2l": list(self.m2l.parameters()),
            "l2m": list(self.l2m.parameters()),
            # the rest of SAM, whatever train_image_encoder says now: disjoint groups, so unfreezing a stage's set
            # does not depend on what an earlier call unfroze (the image encoder is a group of its own)
            "mask_decoder": [p for p in self.mask_decoder.parameters() if id(p) not in in_sam_encoder],
        }

    def set_trainable(self, groups: list[str] | tuple[str, ...]) -> None:
        """Freeze everything, then unfreeze the named `parameter_groups` (e.g. stage 3: `Stage3Module.trainable`).

        Prefer this to `module.requires_grad_(True)`: that would also unfreeze the base Qwen weights under
        `backbone` and SAM's image encoder (which runs without gradients unless train_image_encoder is set).
        """
        table = self.parameter_groups()
        unknown = [g for g in groups if g not in table]
        if unknown:
            raise ValueError(f"groups: unknown {unknown}, expected names from {sorted(table)}")
        self.requires_grad_(False)
        for g in groups:
            for p in table[g]:
                p.requires_grad_(True)
        # SAM's image encoder runs under no_grad unless it is trained (a group of its own)
        self.mask_decoder.train_image_encoder = "mask_decoder_image_encoder" in groups

    # ---- visual features ------------------------------------------------------------------------------------
    def _encode_visual(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """Run Qwen's ViT: (merged LLM-width features per item, pre-merger raster features per item)."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.qwen.model.visual
        out = visual(pixel_values.type(visual.dtype), grid_thw=grid_thw)
        # last_hidden_state is in window-attention order; the merger's input groups merge_unit rows per token.
        window_index, _ = get_vision_window_index(
            grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size
        )
        pre = visual.merger.ln_q(out.last_hidden_state).view(-1, visual.merger.hidden_size)
        window_index = window_index.to(pre.device)
        pre = pre[torch.argsort(window_index)]  # (N_merged, 4*vit) in raster order
        sizes = (grid_thw.prod(-1) // self.merge_unit).tolist()
        out.pooler_output = torch.split(out.pooler_output, sizes)
        return out, (torch.split(pre, sizes), torch.split(window_index, sizes))

    def _frame_grids(self, pre: tuple, grid_thw: torch.Tensor, kind: str, index: int) -> list[FrameGrid]:
        """Per temporal grid step of one media item, its token grid (frames map to step t // temporal_patch)."""
        t, h, w = (int(v) for v in grid_thw[index])
        m = int(self.merge_unit**0.5)
        feats_all, windows = pre
        hw = (h // m) * (w // m)
        feats = feats_all[index].view(t, hw, -1)
        # the window index is global over the batch's items and frame-contiguous: make it local to each step
        win = windows[index].view(t, hw)
        win = win - win.min(dim=1, keepdim=True).values
        return [FrameGrid(feats[i], (h // m, w // m), win[i]) for i in range(t)]

    def _clip_frames(self, batch: Batch, media) -> list[int]:
        """Per sample, its frame count as the LLM sees it: temporal_patch_size x temporal grid steps (even-padded)."""
        tps = self.qwen.config.vision_config.temporal_patch_size
        out = []
        for items in media:
            steps = 0
            for kind, idx in items:
                g = batch.image_grid_thw if kind == "image" else batch.video_grid_thw
                steps += int(g[idx][0])
            out.append(tps * max(steps, 1))
        return out

    def _sample_frames(self, batch: Batch, media, visual_pre: dict) -> list[list[FrameGrid]]:
        """Per sample, per source frame, the visual token grid it was encoded into."""
        tps = self.qwen.config.vision_config.temporal_patch_size
        out = []
        for b, items in enumerate(media):
            T = int(batch.frames[b].shape[0]) if batch.frames else 0
            grids: list[FrameGrid] = []
            for kind, idx in items:
                g = batch.image_grid_thw if kind == "image" else batch.video_grid_thw
                steps = self._frame_grids(visual_pre[kind], g, kind, idx)
                if kind == "image":
                    grids.extend(steps)
                else:
                    # a video grid step covers temporal_patch_size consecutive frames
                    grids.extend(steps[min(f // tps, len(steps) - 1)] for f in range(len(steps) * tps))
            if T and len(grids) > T:
                grids = grids[:T]
            out.append(grids)
        return out

    def _pool(
        self,
        grids: list[FrameGrid],
        frame: int,
        mask: torch.Tensor | None,
        where: str,
        num_frames: int,
        cells: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked-pooled merger input under `mask` (or ready token-grid `cells`) on `frame` -> (4*vit,)."""
        if not 0 <= frame < num_frames:
            raise ValueError(f"{where}.frame: got {frame}, expected 0 <= frame < {num_frames} (frames of the sample)")
        if frame >= len(grids):
            raise ValueError(f"{where}.frame: frame {frame} has no visual tokens (sample has {len(grids)} encoded)")
        if cells is None and (mask is None or mask.dim() != 2):
            shape = None if mask is None else tuple(mask.shape)
            raise ValueError(f"{where}.mask: got {shape}, expected an (H, W) bool tensor")
        g = grids[frame]
        if self.cfg.memory.pooling == "area" and cells is None:
            # our first pooling (area-weighted cells), kept for models trained with it
            return masked_pool(g.features.float(), mask.to(g.features.device), g.grid_hw, where=f"{where}.mask")
        if cells is None:
            cells = cell_mask(mask.to(g.features.device), g.grid_hw, self.patch_size)
        if tuple(cells.shape) != g.grid_hw:
            raise ValueError(f"{where}.cells: got shape {tuple(cells.shape)}, expected the token grid {g.grid_hw}")
        flat = cells.to(g.features.device).flatten().bool()
        if not bool(flat.any()):
            raise ValueError(f"{where}.mask: empty mask on the token grid (no covered cell); expected at least one")
        if self.cfg.memory.pooling == "window":
            # as released: rows of the window-ordered merger input picked by a raster-ordered cell mask
            rows = g.window_index[flat]
        else:
            rows = flat.nonzero().flatten()
        return g.features[rows].float().mean(0)

    # ---- embeddings -----------------------------------------------------------------------------------------
    def _input_embeddings(
        self, batch: Batch, frame_grids: list[list[FrameGrid]], clip_frames: list[int]
    ) -> torch.Tensor:
        """Token embeddings with new-token rows, <|ref|> prompt tokens and <|mem|> memory tokens filled in."""
        ids = batch.input_ids
        emb = self.token_embeddings(ids)  # (B, L, D)
        ref_id, mem_id = self.token_ids[REF], self.token_ids[MEM]
        sparse_kinds, sparse_coords, sparse_frames, sparse_pos, sparse_clip = [], [], [], [], []
        pooled, pooled_pos = [], []
        for b in range(batch.size):
            T = int(batch.frames[b].shape[0]) if batch.frames else 1
            ref_pos = (ids[b] == ref_id).nonzero().flatten().tolist()
            prompts = batch.prompts[b] if batch.prompts else []
            if len(ref_pos) != len(prompts):
                raise ValueError(f"sample {b}: {len(ref_pos)} {REF} tokens but {len(prompts)} visual prompts")
            for j, (p, pos) in enumerate(zip(prompts, ref_pos)):
                where = f"prompts[{b}][{j}]"
                if not 0 <= p.frame < T:
                    raise ValueError(f"{where}.frame: got {p.frame}, expected 0 <= frame < {T} (frames of the sample)")
                if p.kind in ("point", "box"):
                    sparse_kinds.append(p.kind)
                    sparse_coords.append(tuple(p.coords))
                    sparse_frames.append(p.frame)
                    sparse_clip.append(clip_frames[b])
                    sparse_pos.append((b, pos))
                elif p.kind == "mask":
                    pooled.append(self._pool(frame_grids[b], p.frame, p.mask, where, T))
                    pooled_pos.append((b, pos))
                else:
                    raise ValueError(f"{where}.kind: got {p.kind!r}, expected 'point', 'box' or 'mask'")
            mem_pos = (ids[b] == mem_id).nonzero().flatten().tolist()
            mems = batch.memory[b] if batch.memory else []
            if len(mem_pos) != len(mems):
                raise ValueError(f"sample {b}: {len(mem_pos)} {MEM} tokens but {len(mems)} memory refs")
            for j, (m, pos) in enumerate(zip(mems, mem_pos)):
                pooled.append(self._pool(frame_grids[b], m.frame, m.mask, f"memory[{b}][{j}]", T, m.cells))
                pooled_pos.append((b, pos))
        values, positions = [], []
        if sparse_pos:
            if isinstance(self.sparse_prompt_encoder, RefPromptEncoder):
                values.append(self.sparse_prompt_encoder(sparse_kinds, sparse_coords, sparse_frames, sparse_clip))
            else:
                values.append(self.sparse_prompt_encoder(sparse_kinds, sparse_coords, sparse_frames))
            positions += sparse_pos
        if pooled_pos:
            values.append(self.m2l(torch.stack(pooled)))  # (N, 4*vit) -> (N, D)
            positions += pooled_pos
        if positions:
            bi = torch.tensor([p[0] for p in positions], device=emb.device)
            li = torch.tensor([p[1] for p in positions], device=emb.device)
            emb = emb.index_put((bi, li), torch.cat(values).to(emb.dtype))
        return emb

    # ---- forward --------------------------------------------------------------------------------------------
    def _trainable_anchor(self) -> torch.Tensor:
        """0 * one element of every trainable parameter of our modules, so unused ones stay in the graph."""
        anchor = self.new_token_embed.sum() * 0.0
        params = [
            *self.sparse_prompt_encoder.parameters(),
            *self.m2l.parameters(),
            *self.l2m.parameters(),
            *self.mask_decoder.trainable_parameters(),
        ]
        for p in params:
            if p.requires_grad:
                anchor = anchor + p.view(-1)[0] * 0.0
        return anchor

    def embed(self, batch: Batch, visual_cache: dict | None = None) -> tuple[torch.Tensor, dict, list[list[FrameGrid]]]:
        """The ViT once, then the (B, L, D) input embeddings with <|ref|> / <|mem|> / new-token rows filled in.

        Returns the embeddings, the ViT outputs (Qwen scatters them into the media positions itself) and the
        per-frame token grids (for pooling). `visual_cache` (a dict kept by a conversation) reuses the ViT outputs of
        media already encoded with the same pixels (chat turns and the two-pass protocol see the same media).
        """
        media = _split_media(batch, self.merge_unit)
        enc_outputs, visual_pre = {}, {}
        for kind, pixels, grid in (
            ("image", batch.pixel_values, batch.image_grid_thw),
            ("video", batch.pixel_values_videos, batch.video_grid_thw),
        ):
            if pixels is None:
                continue
            hit = (visual_cache or {}).get(kind)
            if hit is not None and torch.equal(hit[0], grid) and torch.equal(hit[1], pixels):
                enc_outputs[kind], visual_pre[kind] = hit[2], hit[3]
                continue
            enc_outputs[kind], visual_pre[kind] = self._encode_visual(pixels, grid)
            if visual_cache is not None and not torch.is_grad_enabled():
                visual_cache[kind] = (grid, pixels, enc_outputs[kind], visual_pre[kind])
        frame_grids = self._sample_frames(batch, media, visual_pre)
        emb = self._input_embeddings(batch, frame_grids, self._clip_frames(batch, media))
        return emb, enc_outputs, frame_grids

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) text token ids -> (B, L, D) float input embeddings, our rows for the three new tokens."""
        if self.new_token_embed.dtype != torch.float32:
            raise TypeError(
                f"new_token_embed: got dtype {self.new_token_embed.dtype}, expected torch.float32: UniPixel keeps SAM "
                "and its new modules in float32 (sam2's prompt encoder computes in float32); set the LLM's dtype with "
                "model.dtype=bfloat16 instead of casting the whole model with .to(torch.bfloat16)"
            )
        emb = self.qwen.get_input_embeddings()(ids).float()
        is_new = ids[..., None] == self.new_ids  # (B, L, 3)
        return torch.where(is_new.any(-1, keepdim=True), is_new.float() @ self.new_token_embed, emb)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) post-norm states -> (B, L, V) logits, our LM-head rows for the three new tokens."""
        logits = self.qwen.lm_head(hidden)
        logits.index_copy_(-1, self.new_ids, (hidden.float() @ self.new_token_head.t()).to(logits.dtype))
        return logits

    def labelled_lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`lm_loss(self.logits(hidden), labels)` with the LM head run only at the positions whose next token is
        labelled: hidden (B, L, D) post-norm states, labels (B, L) with -100 masked; 0 (in the graph) if none is."""
        target = labels[:, 1:]
        scored = target != IGNORE_INDEX  # (B, L-1)
        if not bool(scored.any()):
            return hidden.sum() * 0.0
        rows = hidden[:, :-1][scored]  # (N, D): the states that predict a labelled token
        return F.cross_entropy(self.logits(rows[None])[0].float(), target[scored])

    def forward(self, batch: Batch, decode_masks: bool = True) -> UniPixelOutput:
        """Teacher-forced pass: LM logits and loss, masks for every <|seg|> (capped in training), mask losses.

        In training mode only the first `loss.max_objects` <|seg|>s of a sample are decoded (they are the ones
        with mask losses); in eval mode all are. decode_masks=False skips SAM (used while generating), except
        for the prompt-side <|seg|>s that memory.variant=ref_seg_pool needs (then only those are returned).
        """
        emb, enc_outputs, frame_grids = self.embed(batch)
        hidden, pre_norm = self._run_llm(batch, emb, enc_outputs)  # (B, L, D) after / before the final norm
        pooled_segs = self._prompt_seg_positions(batch) if self.cfg.memory.variant == "ref_seg_pool" else {}
        masks, ious, scores, sums, picks = self._decode_segs(
            batch, self._seg_states(hidden, pre_norm), decode_masks, pooled_segs
        )
        if pooled_segs:
            # ref_seg_pool: a second LLM pass whose prompt-side <|seg|> inputs also carry the M->L pooled feature
            # of the mask just predicted for them; the answer (logits, LM loss) comes from this pass
            emb = self._add_pooled_masks(emb, frame_grids, masks, picks, pooled_segs)
            hidden, pre_norm = self._run_llm(batch, emb, enc_outputs)
        if self.training and batch.labels is not None:
            # a training step needs logits only where a label is scored: the (B, L, V) float tensor of a real
            # vocabulary (152K) over the whole prompt, media included, is the step's largest; same loss, same gradient
            logits, losses = None, {"lm": self.labelled_lm_loss(hidden, batch.labels)}
        else:
            # in place inside: Linear's backward does not need its output; a (B, L, V) copy is large at real sizes
            logits = self.logits(hidden)
            losses = {"lm": lm_loss(logits, batch.labels) if batch.labels is not None else logits.sum() * 0.0}
        w = self.cfg.loss
        n_mask = sums["n_mask"].clamp(min=1)
        n_obj = sums["n_obj"].clamp(min=1)
        anchor = self._trainable_anchor()
        losses["focal"] = sums["focal"] / n_mask + anchor
        losses["dice"] = sums["dice"] / n_mask
        losses["iou"] = sums["iou"] / n_mask
        losses["objectness"] = sums["objectness"] / n_obj
        total = (
            w.lm * losses["lm"]
            + w.focal * losses["focal"]
            + w.dice * losses["dice"]
            + w.iou * losses["iou"]
            + w.objectness * losses["objectness"]
        )
        lm_tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum() if batch.labels is not None else n_mask * 0
        part_sums = {"lm": losses["lm"] * lm_tokens, **{k: sums[k] for k in ("focal", "dice", "iou", "objectness")}}
        counts = {"lm_tokens": lm_tokens, "mask_samples": sums["n_mask"], "objectness_samples": sums["n_obj"]}
        return UniPixelOutput(total, losses, logits, masks, ious, scores, part_sums, counts)

    def _run_llm(
        self, batch: Batch, emb: torch.Tensor, enc_outputs: dict, cache: list | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen's LLM on our input embeddings (media features scattered by Qwen itself).

        Returns the (B, L, D) states after the final norm and the last layer's residual stream before it (what the
        released `seg_head` reads), the latter caught by a pre-hook on the norm. A `cache` list receives the KV
        cache (generation's prefill).
        """
        with bb.PreNormCatcher(self.qwen) as caught:
            out = self.qwen.model(
                input_ids=batch.input_ids,
                inputs_embeds=emb.to(self.llm_dtype),
                attention_mask=batch.attention_mask,
                mm_token_type_ids=batch.mm_token_type_ids,
                image_grid_thw=batch.image_grid_thw,
                video_grid_thw=batch.video_grid_thw,
                second_per_grid_ts=batch.second_per_grid_ts,
                mm_encoder_outputs=enc_outputs or None,
                use_cache=cache is not None,
            )
        if cache is not None:
            cache.append(out.cache)
        return out.last_hidden_state, caught.value

    def _seg_states(self, hidden: torch.Tensor, pre_norm: torch.Tensor) -> torch.Tensor:
        """(B, L, D) states whose row at a <|seg|> position feeds its mask.

        Released: the pre-norm state of the position before each <|seg|> (the one that predicts it), shifted so it
        sits at the <|seg|>'s own position; seg_head=token: the post-norm state of the <|seg|> itself.
        """
        if self.cfg.seg_head != "released":
            return hidden
        return torch.cat([pre_norm[:, :1], pre_norm[:, :-1]], dim=1)

    def _prompt_seg_positions(self, batch: Batch) -> dict[int, dict[int, int]]:
        """Per sample, {position of a <|seg|> right after a <|ref|>: that prompt's frame} (ref_seg_pool).

        Strict on purpose: collate and chat both write ``<|ref|><|seg|>`` (no space), so a user-side <|seg|> that
        does not sit right after its <|ref|> is no prompt-side <|seg|>; a seg asked for elsewhere is not pooled.
        """
        ref_id, seg_id = self.token_ids[REF], self.token_ids[SEG]
        out: dict[int, dict[int, int]] = {}
        for b in range(batch.size):
            ids = batch.input_ids[b]
            refs = (ids == ref_id).nonzero().flatten().tolist()
            prompts = batch.prompts[b] if batch.prompts else []
            found = {
                r + 1: prompts[j].frame for j, r in enumerate(refs) if r + 1 < ids.shape[0] and ids[r + 1] == seg_id
            }
            if found:
                out[b] = found
        return out

    def _add_pooled_masks(
        self,
        emb: torch.Tensor,
        frame_grids: list[list[FrameGrid]],
        masks: list[torch.Tensor],
        picks: list[list[int]],
        pooled_segs: dict[int, dict[int, int]],
    ) -> torch.Tensor:
        """Add M->L(features pooled under each prompt-side <|seg|>'s predicted mask, on its frame) to its input."""
        feats, where = [], []
        for b, found in pooled_segs.items():
            for i, pos in enumerate(picks[b]):  # masks[b][i] is the mask of the <|seg|> at picks[b][i]
                if pos not in found:
                    continue
                g = frame_grids[b][found[pos]]
                prob = masks[b][i, found[pos]].detach().sigmoid()  # (H, W); the mask is an input here, not trained
                w = F.adaptive_avg_pool2d(prob[None, None], g.grid_hw).flatten().to(g.features.dtype)  # (h*w,)
                feats.append((w[:, None] * g.features).sum(0) / w.sum().clamp(min=1e-6))
                where.append((b, pos))
        if not feats:
            return emb
        bi = torch.tensor([p[0] for p in where], device=emb.device)
        li = torch.tensor([p[1] for p in where], device=emb.device)
        return emb.index_put((bi, li), self.m2l(torch.stack(feats).float()).to(emb.dtype), accumulate=True)

    def _seg_positions(self, batch: Batch, decode: bool, always: dict[int, dict[int, int]]) -> list[list[int]]:
        """Per sample, the token positions of the <|seg|>s to decode (the first max_objects in training).

        Positions in `always` (ref_seg_pool's prompt-side <|seg|>s) are decoded even when decode is False.
        """
        seg_id = self.token_ids[SEG]
        cap = self.cfg.loss.max_objects if self.training else None
        if cap is not None:
            # a seeded draw per training step, counted in a checkpointed buffer so a resumed run draws the same;
            # each rank its own stream (rank 0's is the single-process one), as the released per-process draw is
            gen = torch.Generator().manual_seed(draw_seed(self.cfg.seed, int(self.mask_draws), _process_rank()))
            self.mask_draws += 1
        picks = []
        for b in range(batch.size):
            pos = (batch.input_ids[b] == seg_id).nonzero().flatten().tolist()
            n_targets = batch.seg_masks[b].shape[0] if batch.seg_masks else 0
            if n_targets and n_targets != len(pos):  # 0 targets = an unsupervised sample (e.g. evaluation)
                raise ValueError(
                    f"sample {b}: {len(pos)} {SEG} tokens but seg_masks has {batch.seg_masks[b].shape[0]} objects"
                )
            if cap is not None and len(pos) > cap:
                keep = torch.randperm(len(pos), generator=gen)[:cap].sort().values.tolist()  # as released: random
                pos = [pos[i] for i in keep]
            chosen = pos if decode else []
            extra = [p for p in always.get(b, {}) if p not in chosen]
            picks.append(sorted(chosen + extra) if extra else chosen)
        return picks

    def _run_decoder(self, batch: Batch, hidden: torch.Tensor, picks: list[list[int]]) -> dict[int, DecodedMasks]:
        """SAM decoding of the picked <|seg|>s: per sample with any, its (k, T) DecodedMasks.

        All frames go through SAM's image encoder in one call; samples with the same frame count decode as one
        SAM batch (their objects stacked), so propagation costs T steps per distinct video length.
        """
        need = [b for b in range(batch.size) if picks[b]]
        if not need:
            return {}
        device = hidden.device
        frames = torch.cat([batch.frames[b] for b in need]).to(device)  # (sum T, 3, H, W)
        features = self.mask_decoder.encode_frames(frames)
        lengths = [int(batch.frames[b].shape[0]) for b in need]
        frame_start = dict(zip(need, torch.tensor([0, *lengths]).cumsum(0).tolist()))
        row_start = dict(zip(need, torch.tensor([0] + [len(picks[b]) for b in need]).cumsum(0).tolist()))
        seg_hidden = torch.cat([hidden[b, picks[b]] for b in need]).float()  # (N, D)
        tokens = self.l2m(seg_hidden)  # (N, D) -> (N, hidden_tokens, 256)
        by_len: dict[int, list[int]] = {}
        for b, T in zip(need, lengths):
            by_len.setdefault(T, []).append(b)
        decoded: dict[int, DecodedMasks] = {}
        for T, group in by_len.items():
            rows = torch.cat([torch.arange(row_start[b], row_start[b] + len(picks[b])) for b in group]).to(device)
            index = torch.cat([(frame_start[b] + torch.arange(T)).expand(len(picks[b]), T) for b in group])
            dec = self.mask_decoder(features, index.to(device), tokens[rows])  # index: (K_group, T)
            at = 0
            for b in group:
                k = len(picks[b])
                part = slice(at, at + k)
                decoded[b] = DecodedMasks(
                    dec.low_res[part],
                    dec.raw[part],
                    dec.ious[part],
                    dec.object_scores[part],
                    dec.raw_multi[part] if dec.raw_multi is not None else None,
                    dec.ious_multi[part] if dec.ious_multi is not None else None,
                )
                at += k
        return decoded

    def _decode_segs(
        self, batch: Batch, hidden: torch.Tensor, decode: bool = True, always: dict | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor], list[list[int]]]:
        """Masks for the <|seg|> tokens of every sample; mask-loss sums against batch.seg_masks when given.

        Returns per-sample masks / IoUs / object scores, the loss sums, and the decoded <|seg|> positions.
        """
        picks = self._seg_positions(batch, decode, always or {})
        if not self.training and self.cfg.mask_decoder.propagation == "bidirectional":
            return self._decode_segs_bidirectional(batch, hidden, picks)
        decoded = self._run_decoder(batch, hidden, picks)
        zero = hidden.sum() * 0.0
        sums = {k: zero for k in ("focal", "dice", "iou", "objectness")}
        sums["n_mask"] = torch.zeros((), device=hidden.device)
        sums["n_obj"] = torch.zeros((), device=hidden.device)
        masks, ious, scores = [], [], []
        for b in range(batch.size):
            T, _, H, W = batch.frames[b].shape
            k = len(picks[b])
            if k == 0:
                masks.append(hidden.new_zeros((0, T, H, W), dtype=torch.float32))
                ious.append(hidden.new_zeros((0, T), dtype=torch.float32))
                scores.append(hidden.new_zeros((0, T), dtype=torch.float32))
                continue
            dec = decoded[b]
            full = self.mask_decoder.upsample(dec.low_res, (H, W))  # (k, T, h, w) -> (k, T, H, W)
            masks.append(full)
            ious.append(dec.ious)
            scores.append(dec.object_scores)
            if batch.seg_masks and batch.seg_masks[b].shape[0]:
                all_pos = (batch.input_ids[b] == self.token_ids[SEG]).nonzero().flatten().tolist()
                rows = torch.tensor([all_pos.index(p) for p in picks[b]])  # target row of each decoded <|seg|>
                tgt = batch.seg_masks[b][rows].to(full.device)
                valid = batch.seg_valid[b][rows] if batch.seg_valid else torch.ones(k, T, dtype=torch.bool)
                # losses on the logits before SAM's hard "no object" gating, so masks learn even where the
                # (still untrained) object score says absent; objectness is trained by its own loss
                if self.cfg.loss.mask == "released":
                    w = self.cfg.loss
                    part = released_mask_losses(
                        dec.raw_multi,
                        dec.ious_multi,
                        dec.object_scores,
                        tgt,
                        valid.to(full.device),
                        self.mask_decoder.image_size,
                        w.focal,
                        w.dice,
                    )
                    # per-sample losses, averaged over the samples with masks (as released)
                    part["n_mask"] = part["n_obj"] = torch.ones((), device=hidden.device)
                else:
                    raw = self.mask_decoder.upsample(dec.raw, (H, W))
                    part = mask_losses(raw, tgt, valid.to(full.device), dec.ious, dec.object_scores)
                sums = {key: value + part[key] for key, value in sums.items()}
        return masks, ious, scores, sums, picks

    def _decode_segs_bidirectional(self, batch: Batch, hidden: torch.Tensor, picks: list[list[int]]) -> tuple:
        """Evaluation with `mask_decoder.propagation=bidirectional`: each picked <|seg|> decoded by `decode_states`
        from its best-supported frame, both ways (training always decodes forward from frame 0, as released).

        The training losses, predicted IoUs and object scores belong to the forward decoding: NaN here, so no mask
        loss of this mode reads as a number.
        """
        nan = hidden.sum() * 0.0 + float("nan")
        sums = {k: nan for k in ("focal", "dice", "iou", "objectness")}
        sums["n_mask"] = sums["n_obj"] = torch.ones((), device=hidden.device)
        masks, ious = [], []
        for b in range(batch.size):
            T, _, H, W = batch.frames[b].shape
            states = hidden[b, picks[b]]
            out = self.decode_states(batch.frames[b], states, propagation="bidirectional")
            masks.append(out.to(hidden.device, torch.float32).reshape(len(picks[b]), T, H, W))
            ious.append(torch.full((len(picks[b]), T), float("nan"), device=hidden.device))
        return masks, ious, [i.clone() for i in ious], sums, picks

    @torch.no_grad()
    def seg_states(self, batch: Batch, visual_cache: dict | None = None, cache: list | None = None) -> torch.Tensor:
        """(n, D) the states that feed every <|seg|> of a one-sample batch's text, in order (no SAM).

        A `cache` list receives the forward's KV cache (the two-pass protocol's answer reuses its media prefix).
        """
        emb, enc, _ = self.embed(batch, visual_cache)
        hidden, pre_norm = self._run_llm(batch, emb, enc, cache=cache)
        states = self._seg_states(hidden, pre_norm)[0]
        return states[(batch.input_ids[0] == self.token_ids[SEG]).nonzero().flatten()]

    @torch.no_grad()
    def decode_states(
        self,
        frames: torch.Tensor,
        states: torch.Tensor,
        chunk: int = 16,
        propagation: str | None = None,
        start: list[int | None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        store: dict | None = None,
        binary: bool = False,
    ) -> torch.Tensor:
        """<|seg|> states (N, D) on a clip of (T, 3, H, W) uint8 frames -> (N, T, H, W) mask logits (`binary`: bool
        masks, logits > 0, brought to the frames' size a chunk of frames at a time: no float clip is held).

        forward (the default of `mask_decoder.propagation`, as released): decoded on frame 0 and propagated through
        SAM 2's memory. bidirectional: decoded on `start[i]` (a prompt's frame), or where None on the frame that
        supports the object best on its own (`MaskDecoder.frame_scores`), then propagated forward to the end and
        backward to frame 0. Frames are encoded in chunks of `chunk`. `progress(done, total)` follows the frames
        decoded (all objects and directions counted). `store`: a dict a conversation keeps for these same frames, so
        SAM's image encoder runs once per conversation for clips up to 64 frames (bidirectional decoding keeps one of
        its own when none is given: its frame scores and every walk read the same features). With
        `mask_decoder.mode=independent` every frame is decoded from the prompt alone (no memory, no direction):
        `propagation` and `start` then change nothing.
        """
        T, _, H, W = frames.shape
        device = self.new_token_embed.device
        if states.shape[0] == 0:
            return torch.zeros(0, T, H, W, dtype=torch.bool if binary else torch.float32)
        propagation = propagation or self.cfg.mask_decoder.propagation
        if propagation not in ("forward", "bidirectional"):
            raise ValueError(f"propagation: got {propagation!r}, expected 'forward' or 'bidirectional'")
        tokens = self.l2m(states.float().to(device))  # (N, D) -> (N, hidden_tokens, 256)
        if propagation == "forward" or self.mask_decoder.mode == "independent":
            tick = None if progress is None else (lambda done, _total: progress(done, T))
            dec = self.mask_decoder(
                StreamedFrames(self.mask_decoder, frames, chunk, store), list(range(T)), tokens, on_frame=tick
            )
            return self._full_size(dec.low_res.cpu(), (H, W), binary, chunk)
        starts = list(start) if start is not None else [None] * tokens.shape[0]
        if len(starts) != tokens.shape[0]:
            raise ValueError(f"start: got {len(starts)} frames, expected one per state ({tokens.shape[0]})")
        # one encoding of each frame serves the frame scores and both directions of every object (clips up to the
        # store's 64 frames; longer ones stream, one chunk held, and are encoded again by each walk)
        streamed = StreamedFrames(self.mask_decoder, frames, chunk, {} if store is None else store)
        if any(s is None for s in starts):
            scores = torch.cat(
                [self.mask_decoder.frame_scores(streamed.chunk_features(i), tokens) for i in range(0, T, chunk)], dim=1
            )  # (N, T)
            starts = [int(scores[i].argmax()) if s is None else s for i, s in enumerate(starts)]
        out = torch.zeros(tokens.shape[0], T, H, W, dtype=torch.bool if binary else torch.float32)
        total, done = sum(T + 1 for _ in starts), [0]

        def tick(_step: int, _steps: int) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        for i, s in enumerate(starts):
            if not 0 <= s < T:
                raise ValueError(f"start[{i}]: got {s}, expected a frame in [0, {T - 1}]")
            order_fwd, order_bwd = list(range(s, T)), list(range(s, -1, -1))
            for order in (order_bwd, order_fwd):  # the forward pass writes frame s last
                dec = self.mask_decoder(streamed, order, tokens[i : i + 1], on_frame=tick)
                out[i, order] = self._full_size(dec.low_res.cpu(), (H, W), binary, chunk)[0]
        return out

    def _full_size(self, low_res: torch.Tensor, size: tuple[int, int], binary: bool, chunk: int) -> torch.Tensor:
        """(N, T, h, w) low-res logits -> (N, T, H, W): float logits, or (`binary`) bool masks upsampled `chunk`
        frames at a time (bilinear per frame, so the same values as the whole clip at once)."""
        if not binary:
            return self.mask_decoder.upsample(low_res, size)
        out = torch.empty(*low_res.shape[:2], *size, dtype=torch.bool)
        for s in range(0, low_res.shape[1], chunk):
            out[:, s : s + chunk] = self.mask_decoder.upsample(low_res[:, s : s + chunk], size) > 0
        return out

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[torch.Tensor]:
        """Binary masks (K, T, H, W) bool for every <|seg|> of each sample's (teacher-forced) text."""
        was = self.training
        self.eval()
        try:
            out = self.forward(_without_targets(batch))
        finally:
            self.train(was)
        return [m > 0 for m in out.pred_masks]

    # ---- chat -----------------------------------------------------------------------------------------------
    def chat(
        self,
        media: torch.Tensor,
        text: str,
        prompts: list | None = None,
        history: ChatState | None = None,
        max_new_tokens: int = 64,
        kind: str | None = None,
        sam_media: torch.Tensor | None = None,
        llm_index: list[int] | None = None,
        use_cache: bool = True,
        assistant_prefix: str = "",
        memory: dict[int, torch.Tensor] | None = None,
        processor_kwargs: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ChatResult:
        """One user turn of a multi-round chat; see `pixelqa.model.chat` for the protocol.

        media: the LLM's frames (T, 3, H, W) uint8; sam_media: the frames SAM segments (T_sam, 3, H, W) uint8, by
        default the same; llm_index[i]: the index of LLM frame i in sam_media. Prompt frames index LLM frames;
        masks cover the SAM frames. assistant_prefix forces the answer's start; memory (object id -> (T_sam, H, W)
        masks) enters the bank before the turn without pre-filling; processor_kwargs (a pixel budget) go to every
        processor call of the conversation; progress(done, total) follows SAM's frames (long videos).
        """
        return chat_turn(
            self,
            media,
            text,
            prompts or [],
            history,
            max_new_tokens,
            kind,
            sam_media,
            llm_index,
            use_cache,
            assistant_prefix,
            memory,
            processor_kwargs,
            progress,
        )

    # ---- save / load ----------------------------------------------------------------------------------------
    def keep_backbone_weights(self, keys: typing.Iterable[str]) -> None:
        """Mark backbone state-dict keys loaded from a save or a checkpoint: they differ from the rebuilt base (a
        stage's extra_trainable weights), so `trainable_state_dict` keeps them after they stop being trained."""
        self.kept_backbone_keys |= {k for k in keys if k.startswith("backbone.")}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that is ours: prompt encoder, projectors, SAM, new token rows, LoRA adapters, and the backbone
        weights trained now or loaded as trained (`keep_backbone_weights`)."""
        trained = {f"backbone.{n}" for n, p in self.backbone.named_parameters() if p.requires_grad}
        trained |= self.kept_backbone_keys
        return {
            k: v.detach().cpu()
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.") or "lora_" in k or k in trained
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config + our weights atomically (temp dir + rename); the base model is referenced by config.

        `directory` may be new, empty or an earlier save; a folder holding anything else is refused."""
        if not replaceable_folder(directory, lambda name: name in (CONFIG_FILE, WEIGHTS_FILE)):
            raise FileExistsError(
                f"directory: {str(directory)!r} holds files other than a saved UniPixel's ({CONFIG_FILE}, "
                f"{WEIGHTS_FILE}); expected a new folder, an empty one or an earlier save (it is replaced whole)"
            )
        with atomic_folder(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2))
            torch.save(self.trainable_state_dict(), tmp / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        load_weights: Callable[[Path], typing.Any] | None = None,
        **overrides: typing.Any,
    ) -> UniPixel:
        """Rebuild the base (tiny: deterministically; real: from cfg.path) and load our weights.

        The weights file is read by `load_weights(path)`; by default `torch.load(weights_only=True)`, which refuses
        a file needing any object besides tensors and plain data (a ValueError naming it: unpickling can run code).
        A caller that lets its user trust a file passes its own reader (predict: `pixelqa.checkpoints`' reader with
        `--trust-checkpoint`). A folder that cannot be read is a ValueError naming the file and what was expected
        (FileNotFoundError when it holds no config).
        """
        root = Path(directory)
        if not (root / CONFIG_FILE).exists():
            raise FileNotFoundError(f"directory: {str(root)!r} holds no {CONFIG_FILE}; not a saved UniPixel")
        cfg = _read_saved_config(root / CONFIG_FILE)
        cfg.mask_decoder.checkpoint = None  # SAM weights come from our file
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise ValueError(f"override {key!r}: not a UniPixelConfig field")
            setattr(cfg, key, value)
        state = (load_weights or _load_saved_weights)(root / WEIGHTS_FILE)  # before the build: a refusal is quick
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise ValueError(
                f"{root / WEIGHTS_FILE}: holds a {type(state).__name__}, expected a state dict (names -> tensors) "
                "written by UniPixel.save_pretrained"
            )
        model = cls(cfg)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a shape that does not fit the model the config builds
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
            raise ValueError(
                f"{root / WEIGHTS_FILE}: does not fit the model of {root / CONFIG_FILE}: {detail}"
            ) from None
        model.keep_backbone_weights(state)
        ours = set(model.trainable_state_dict())
        missing = [k for k in missing if k in ours]
        if missing or unexpected:
            raise ValueError(f"{root / WEIGHTS_FILE}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        return model


def _load_saved_weights(path: Path) -> typing.Any:
    """`torch.load(weights_only=True)` of a save_pretrained weights file; anything it refuses is one ValueError."""
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():  # torch's note on a pickle that is not torch.save's: the refusal says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        needs = found.group(1) if found else "objects outside tensors and plain data"
        raise ValueError(
            f"{path}: needs unpickling of {needs}, which could run code; refused (save_pretrained writes tensors only)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as a torch.save file ({str(exc).splitlines()[0][:200]})") from None


def _read_saved_config(path: Path) -> UniPixelConfig:
    """The UniPixelConfig of a save_pretrained folder; a file that is not one is a ValueError naming it."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a saved UniPixelConfig), got a {type(data).__name__}")
    try:
        cfg = config_from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a UniPixelConfig of this version ({str(exc).splitlines()[0][:200]})") from None
    hints = typing.get_type_hints(UniPixelConfig)
    for f in fields(UniPixelConfig):
        if is_dataclass(hints[f.name]) and not isinstance(getattr(cfg, f.name), hints[f.name]):
            raise ValueError(f"{path}: {f.name}={getattr(cfg, f.name)!r:.80}; expected an object of its settings")
    return cfg


# Values of the switches added with the released-model structure that a config saved before them implies.
LEGACY_SWITCHES = {
    ("seg_head",): "token",
    ("prompt_encoder", "kind"): "fourier",
    ("memory", "pooling"): "area",
    ("mask_decoder", "prompt_padding"): "none",
    ("mask_decoder", "antialias"): False,
    ("loss", "mask"): "single",
}


def config_from_dict(d: dict) -> UniPixelConfig:
    """UniPixelConfig from its `asdict` form; a config saved before the released structure keeps its blocks."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    if "seg_head" not in d:
        for path, value in LEGACY_SWITCHES.items():
            node = d
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node.setdefault(path[-1], value)
    # every nested block of the config, read from its field types (a block added later needs no entry here)
    hints = typing.get_type_hints(UniPixelConfig)
    sub = {f.name: hints[f.name] for f in fields(UniPixelConfig) if is_dataclass(hints[f.name])}
    kwargs = {k: (sub[k](**v) if k in sub and isinstance(v, dict) else v) for k, v in d.items()}
    return UniPixelConfig(**kwargs)


def _without_targets(batch: Batch) -> Batch:
    """A shallow copy of the batch with no mask targets (so every <|seg|> is decoded, no losses)."""
    import copy

    b = copy.copy(batch)
    b.seg_masks, b.seg_valid = [], []
    return b


__all__ = ["IGNORE_INDEX", "UniPixel", "UniPixelOutput", "config_from_dict"]
