"""Plain dataclasses that configure the UniPixel network (no torch import; the recipe schema reuses them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    """LoRA on the QKV/O projections of the ViT and the LLM (paper: rank 128, alpha 256)."""

    enabled: bool = False
    rank: int = 128
    alpha: int = 256
    dropout: float = 0.1  # as released
    vit: bool = True  # adapt visual.blocks.N.attn.qkv / .proj
    llm: bool = True  # adapt language_model.layers.N.self_attn.{q,k,v,o}_proj


@dataclass
class PromptEncoderConfig:
    """Sparse (point / box + time) prompt encoder.

    kind=released: the released SAM-style encoder (`ref_encoder` + `ref_proj*` + `tem_*`), time normalised by the
    clip length t / (T - 1). kind=fourier: our first encoder (Fourier features + type embedding, t / max_frames),
    kept for models trained with it.
    """

    kind: str = "released"  # released | fourier
    hidden: int = 256  # SAM's prompt width
    temporal: bool = True  # temporal encoding of the prompt's frame (ablation: off)
    max_frames: int = 64  # kind=fourier only: frame indices are normalised by this


@dataclass
class MaskDecoderConfig:
    """SAM 2.1 mask decoder: `micro` (tests / demo), `hiera_t`, `hiera_b+` (the paper's)."""

    arch: str = "micro"
    image_size: int = 128  # 768 for the real model
    mode: str = "propagate"  # propagate | independent
    checkpoint: str | None = None  # local SAM 2.1 checkpoint (.pt); None = random init
    pred_obj_scores: bool = True
    train_image_encoder: bool = False  # SAM's Hiera image encoder runs without gradients unless True
    # released: the prompted frame gets SAM's two "not a point" tokens before the <|seg|> tokens; none: ours only
    prompt_padding: str = "released"  # released | none
    antialias: bool = True  # frames resized to image_size with antialiasing (as released)
    # inference: forward = prompt the first frame, propagate forward (as released); bidirectional = prompt the
    # best-supported frame (or the user's prompt frame) and propagate both ways (the paper's stated future work)
    propagation: str = "forward"  # forward | bidirectional
    # SAM's 3 candidate masks per frame, the IoU head picking one (as released); False: one mask per frame (an
    # ablation; on the CPU demo it scored lower: docs/departures.md)
    multimask: bool = True


@dataclass
class MemoryConfig:
    """How referred objects reach the LLM (paper Tab. 11b)."""

    variant: str = "memory_bank"  # ref_only | ref_seg | ref_seg_pool | memory_bank
    # window: pool the merger input in Qwen's window order under a raster cell mask (the released behaviour, an
    # official bug the released weights were trained with); raster: pool the right cells (our fix)
    pooling: str = "window"  # window | raster | area (our first: area-weighted cells, models trained with it)


@dataclass
class LossConfig:
    """Loss weights (paper: 1 / 100 / 5 / 5 / 5) and the per-sample object cap for mask losses.

    mask=released: SAM 2's multimask losses as the release trains them (focal + dice of the best of 3 candidates,
    IoU head on all 3, per object and per frame at SAM's resolution); mask=single: ours (the selected mask only).
    """

    lm: float = 1.0
    focal: float = 100.0
    dice: float = 5.0
    iou: float = 5.0
    objectness: float = 5.0
    max_objects: int = 5  # drawn at random (seeded per step) when a sample has more
    mask: str = "released"  # released | single


@dataclass
class TinySizeConfig:
    """Sizes of the tiny preset's random-init Qwen2.5-VL (ignored by the real presets); defaults: the test model."""

    hidden: int = 64  # LLM width (intermediate 2x)
    layers: int = 2  # LLM decoder layers
    heads: int = 4  # LLM attention heads (key/value heads: half)
    vit_hidden: int = 64  # ViT width (intermediate 2x); the merger maps it to the LLM width
    vit_depth: int = 2  # ViT blocks; the last one attends over the whole frame, the others in windows
    vit_heads: int = 2


@dataclass
class UniPixelConfig:
    """Everything needed to build a UniPixel network."""

    preset: str = "tiny"  # tiny | unipixel-3b | unipixel-7b
    # local directory: a released UniPixel folder (model_type pixel_qwen2_5_vl) or a plain Qwen2.5-VL-Instruct
    # folder (the base for training from scratch); required unless preset=tiny
    path: str | None = None
    hidden_tokens: int = 2  # L->M tokens per <|seg|> (paper Tab. 15: 1/2/4/8)
    # released: seg_head = RMSNorm -> Linear -> GELU -> Linear on the pre-final-norm state of the position before
    # each <|seg|>; token: Linear -> GELU -> Linear on the post-norm state of the <|seg|> itself (ours, earlier)
    seg_head: str = "released"  # released | token
    # seed of every random init (the tiny preset's backbone, SAM without a checkpoint, projectors, LoRA, new token
    # rows) and of the released loss's per-step object draw; in a recipe it follows the run's `seed` unless set
    seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16
    gradient_checkpointing: bool = False
    tiny: TinySizeConfig = field(default_factory=TinySizeConfig)  # preset=tiny only
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    loss: LossConfig = field(default_factory=LossConfig)
