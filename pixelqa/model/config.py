"""Plain dataclasses that configure the UniPixel network (no torch import; the recipe schema reuses them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    """LoRA on the QKV/O projections of the ViT and the LLM (paper: rank 128, alpha 256)."""

    enabled: bool = False
    rank: int = 128
    alpha: int = 256
    dropout: float = 0.05
    vit: bool = True  # adapt visual.blocks.N.attn.qkv / .proj
    llm: bool = True  # adapt language_model.layers.N.self_attn.{q,k,v,o}_proj


@dataclass
class PromptEncoderConfig:
    """Sparse (point / box + time) prompt encoder."""

    hidden: int = 256  # SAM's prompt width
    temporal: bool = True  # 1D Fourier embedding of the frame index (ablation: off)
    max_frames: int = 64  # frame indices are normalised by this before the Fourier embedding


@dataclass
class MaskDecoderConfig:
    """SAM 2.1 mask decoder: `micro` (tests / demo), `hiera_t`, `hiera_b+` (the paper's)."""

    arch: str = "micro"
    image_size: int = 128  # 768 for the real model
    mode: str = "propagate"  # propagate | independent
    checkpoint: str | None = None  # local SAM 2.1 checkpoint (.pt); None = random init
    pred_obj_scores: bool = True
    train_image_encoder: bool = False  # SAM's Hiera image encoder runs without gradients unless True


@dataclass
class MemoryConfig:
    """How referred objects reach the LLM (paper Tab. 11b)."""

    variant: str = "memory_bank"  # ref_only | ref_seg | ref_seg_pool | memory_bank


@dataclass
class LossConfig:
    """Loss weights (paper: 1 / 100 / 5 / 5 / 5) and the per-sample object cap for mask losses."""

    lm: float = 1.0
    focal: float = 100.0
    dice: float = 5.0
    iou: float = 5.0
    objectness: float = 5.0
    max_objects: int = 5


@dataclass
class UniPixelConfig:
    """Everything needed to build a UniPixel network."""

    preset: str = "tiny"  # tiny | unipixel-3b | unipixel-7b
    path: str | None = None  # local directory of Qwen2.5-VL weights (required unless preset=tiny)
    hidden_tokens: int = 2  # L->M tokens per <SEG> (paper Tab. 15: 1/2/4/8)
    seed: int = 0  # seed of the tiny preset's random init
    dtype: str = "float32"  # float32 | bfloat16
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    loss: LossConfig = field(default_factory=LossConfig)
